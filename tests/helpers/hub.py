"""The Hub tests' world: a Hugging Face cache holding a tiny base and two revisions of an
adapter (pull by id, offline), and a recording Hub on loopback for push (the real
``huggingface_hub`` client talks to it). Shared by the Hub and trust tests; its fixtures
are imported into the test modules that use them."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import huggingface_hub
import pytest

from helpers.artifacts import artifact_meta, make_artifact
from helpers.data import write_jsonl
from lastlayer import artifact, hub

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


class Recorder(BaseHTTPRequestHandler):
    """Answers the Hub API calls a push makes, and records each request."""

    log: list[dict]
    remote_files: list[str]
    hold: str = ""  # a request path part; such a request waits for `release` before its answer
    held: threading.Event
    release: threading.Event

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
        if self.hold and self.hold in path:  # a client to be killed while it waits here
            entry["answered"] = False  # never answered: the Hub did not apply it
            self.held.set()
            self.release.wait(60)
            return
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
    handler = type("Handler", (Recorder,), {"log": [], "remote_files": [],
                                            "held": threading.Event(),
                                            "release": threading.Event()})
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
    handler.release.set()
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
