"""Trust: adapters from strangers, models that would run code, and secrets.

- a ``.safetensors`` header is checked by hand before any tensor is read
  (:mod:`lastlayer.artifact.safetensors_check`): sizes, offsets, overlaps, dtypes;
- an adapter's tensors must be the base's top-k blocks' own, with their shapes
  (:mod:`lastlayer.core.weights_check`), on every load path (``Embedder.load``,
  ``load_target``), before PEFT reads a byte of them;
- a downloaded adapter's ``lastlayer.json`` strings are never used as paths;
- a model that needs ``trust_remote_code`` is refused, its code never run;
- the Hub token never appears in what a run prints, logs, raises or writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.artifacts import lora_artifact
from helpers.damage import header, widened
from helpers.hub import REPO, TOKEN
from safetensors.numpy import save_file

from lastlayer import artifact
from lastlayer.artifact import ArtifactError
from lastlayer.artifact.safetensors_check import check_safetensors
from lastlayer.cli import main


@pytest.fixture(scope="module")
def lora(saved_models, tmp_path_factory) -> Path:
    """A top-2 LoRA artifact on the saved tiny BERT."""
    return lora_artifact(saved_models, tmp_path_factory.mktemp("art") / "tiny")


def raw_file(path: Path, head: dict, data: bytes) -> Path:
    """A safetensors file with exactly this header and data area."""
    text = json.dumps(head).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [16, 24]}}


@pytest.mark.parametrize("head,data,expected", [
    ({"a": {"dtype": "F32", "shape": [50_000_000, 512], "data_offsets": [0, 102_400_000_000]}},
     b"\0" * 16, "ends at byte 102400000000 of a data area of 16"),
    ({"a": {"dtype": "F32", "shape": [50_000_000, 512], "data_offsets": [0, 16]}},
     b"\0" * 16, "needs 102400000000 bytes, but its byte range holds 16"),
    ({**GOOD, "b": {"dtype": "F16", "shape": [4], "data_offsets": [8, 16]}}, b"\0" * 24,
     "overlaps the bytes of another tensor"),
    ({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8,
     "ends at byte 16 of a data area of 8"),
    ({"a": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8,
     "unknown dtype 'X99'"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8,
     "is not a list of sizes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8,
     "are not a byte range"),
    ({"a": [1, 2]}, b"", "header entry is not an object"),
], ids=["100 GB claimed", "shape larger than its bytes", "overlapping offsets",
        "past the end", "unknown dtype", "negative size", "reversed range", "not an entry"])
def test_a_bad_header_is_refused_before_any_tensor_is_read(tmp_path, head, data, expected):
    with pytest.raises(ArtifactError, match="truncated or corrupt") as caught:
        check_safetensors(raw_file(tmp_path / "w.safetensors", head, data))
    assert expected in str(caught.value)


def test_a_header_length_past_the_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(ArtifactError, match="its header claims 1000000000000 bytes"):
        check_safetensors(path)


def test_a_sound_header_reads_as_safetensors_does(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"x": np.zeros((3, 5), np.float32), "y": np.ones(7, np.int64)}, str(path))
    entries = check_safetensors(path)
    assert {n: (e.dtype, e.shape) for n, e in entries.items()} == \
        {"x": ("F32", (3, 5)), "y": ("I64", (7,))}
    assert check_safetensors(raw_file(tmp_path / "g.safetensors", GOOD, b"\0" * 24))


def test_the_header_check_runs_before_safetensors_or_peft(lora, tmp_path, monkeypatch,
                                                           saved_models):
    """A damaged header is refused by lastlayer's check: nothing else is ever called."""
    import safetensors

    from lastlayer.inference import Embedder

    folder = Path(shutil.copytree(lora, tmp_path / "a"))
    header(widened)(folder)
    embedder = Embedder(saved_models["bert"], device="cpu")

    def never(*args, **kwargs):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(safetensors, "safe_open", never)
    monkeypatch.setattr("safetensors.torch.load_file", never)
    monkeypatch.setattr("peft.PeftModel.from_pretrained", never)
    with pytest.raises(ArtifactError, match=r"has shape \[4, 64\] but this base needs"):
        embedder.load(folder)


def renamed(old: str, new: str):
    def change(head: dict) -> None:
        for name in [n for n in head if old in n]:
            head[name.replace(old, new)] = head.pop(name)
    return change


@pytest.mark.parametrize("change,expected", [
    (renamed("encoder.layer.3.", "encoder.layer.1."), "is not in the top-2 blocks"),
    (renamed("base_model.model.encoder.layer.2.attention.self.query.lora_A.weight",
             "base_model.model.embeddings.word_embeddings.weight"), "is not in the top-2"),
    (renamed("query.lora_A.weight", "query.lora_A.other.weight"), "not the LoRA weight"),
    (renamed("query.lora_A.weight", "query.weight"), "not the LoRA weight"),
    (renamed("query.lora_B.weight", "query.lora_B.nothing"), "not the LoRA weight"),
], ids=["a bottom block", "the embeddings", "another adapter's name", "a base weight",
        "half a pair"])
def test_tensors_must_be_the_top_k_blocks_own(lora, saved_models, tmp_path, change,
                                              expected):
    from lastlayer.core.target import adapter_target

    folder = Path(shutil.copytree(lora, tmp_path / "a"))
    header(change)(folder)
    with pytest.raises(ArtifactError, match=expected):
        adapter_target(folder, device="cpu")


def test_modules_to_save_is_refused(lora, saved_models, tmp_path):
    from lastlayer.inference import Embedder

    folder = Path(shutil.copytree(lora, tmp_path / "a"))
    config = json.loads((folder / "adapter_config.json").read_text())
    config["modules_to_save"] = ["embeddings"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="modules_to_save"):
        Embedder(saved_models["bert"], device="cpu").load(folder)


@pytest.mark.parametrize("change,expected", [
    (None, None),
    (renamed(".ln_tuning_layers.default.", ".ln_tuning_layers.other."), "is not a weight"),
    (renamed("encoder.layer.3.", "encoder.layer.0."), "is not in the top-1 blocks"),
    (lambda head: head.pop(sorted(n for n in head if n != "__metadata__")[0]),
     r"weight\(s\) of the trained blocks are missing"),
], ids=["loads", "another adapter's copy", "a bottom block", "a weight missing"])
def test_full_kind_tensors_are_checked_too(full, saved_models, tmp_path, change, expected):
    from lastlayer.inference import Embedder

    folder = Path(shutil.copytree(full, tmp_path / "f"))
    embedder = Embedder(saved_models["bert"], device="cpu")
    if change is None:
        assert embedder.load(folder) == "tiny"
        return
    header(change)(folder)
    with pytest.raises(ArtifactError, match=expected):
        embedder.load(folder)


def test_a_downloaded_adapters_base_is_never_a_path(lora, tmp_path, monkeypatch, capsys):
    """``lastlayer eval ORG/NAME``: a base named by a path in lastlayer.json is refused."""
    from huggingface_hub import constants

    import lastlayer.hub as hub

    snapshot = Path(constants.HF_HUB_CACHE) / "models--acme--stranger" / "snapshots" / ("0" * 40)
    folder = Path(shutil.copytree(lora, snapshot))
    assert Path(artifact.read(folder).base.model).is_absolute()  # a path of this machine
    monkeypatch.setattr(hub, "adapter_folder", lambda spec: folder)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"t {i}", "label": str(i % 2)}) + "\n"
                            for i in range(12)))
    assert main(["eval", "acme/stranger", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "which is not a Hub id; lastlayer never uses a downloaded adapter's strings as " \
           "paths" in err and "Traceback" not in err


def remote_code_model(tmp_path: Path) -> tuple[Path, Path]:
    """A local model folder whose ``auto_map`` points at code that writes a marker file."""
    model = tmp_path / "custom"
    model.mkdir()
    marker = tmp_path / "ran"
    (model / "config.json").write_text(json.dumps({
        "model_type": "lastlayer-custom",
        "auto_map": {"AutoConfig": "code.Config", "AutoModel": "code.Model"}}))
    (model / "code.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return model, marker


def test_a_model_that_needs_remote_code_is_refused_unrun(tmp_path, capsys):
    model, marker = remote_code_model(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"t {i}", "label": str(i % 2)}) + "\n"
                            for i in range(12)))
    assert main(["eval", str(model), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "needs trust_remote_code" in err and "set model.trust_remote_code=true" in err
    assert "Traceback" not in err and not marker.exists()


def test_remote_code_runs_only_when_the_model_config_opts_in(tmp_path, monkeypatch):
    from lastlayer.config import ModelConfig, load_recipe
    from lastlayer.core.encoder import load_encoder

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    model, marker = remote_code_model(tmp_path)
    recipe = load_recipe(None, ["model.trust_remote_code=true", "data.train=docs.txt",
                                 "output_dir=out"])
    assert recipe.model.trust_remote_code
    assert not ModelConfig().trust_remote_code  # off by default
    with pytest.raises(Exception):  # noqa: B017 (the marker code defines no model class)
        load_encoder(ModelConfig(name_or_path=str(model), trust_remote_code=True), "cpu")
    assert marker.exists(), "opted in, the repo's code ran"


def everything_written(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*")
                     if p.is_file())


def test_the_token_appears_nowhere(hub_server, pushable, tmp_path, capsys, caplog,
                                   monkeypatch):
    """Push (ok, refused, and against a Hub that echoes the token), then ``env``: the token
    is in no output, log, exception, card or file written."""
    seen = []
    assert main(["push", str(pushable), REPO]) == 0
    seen.append(capsys.readouterr())

    def echo(self):  # a hostile Hub that puts the request's Authorization into its error
        entry = self._record()
        self._reply({"error": f"bad request from {entry['headers'].get('authorization')}"}, 400)

    monkeypatch.setattr(hub_server, "do_POST", echo)
    assert main(["push", str(pushable), REPO]) == 2
    seen.append(capsys.readouterr())
    assert main(["env"]) == 0
    seen.append(capsys.readouterr())
    printed = "".join(s.out + s.err for s in seen) + caplog.text
    assert "hf_***" in printed  # the echo was masked, not dropped
    assert TOKEN not in printed
    assert TOKEN not in everything_written(tmp_path)
    (commit,) = [e for e in hub_server.log if "/commit/" in e["path"]]
    assert TOKEN.encode() not in commit["raw"]  # the card and files pushed
