"""Trust: a checkpoint is safetensors + JSON, and loading one never unpickles anything.

A folder holding a pickle (an Accelerate checkpoint, or one planted to run code when
unpickled) is refused, with exit status 2 and one line, without running it: the pickle's
``__reduce__`` would write a marker file, which must never appear.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers.data import medical_sample
from safetensors.torch import load_file

from lastlayer.cli import main
from lastlayer.training.checkpoint import FILES, MANIFEST, latest_checkpoint


class Planted:
    """A pickle that, when loaded, writes a marker file (it could do anything else)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return medical_sample(tmp_path_factory.mktemp("data") / "medical.jsonl", docs=40)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text("{}\n", encoding="utf-8")
    return path


def args_for(model: Path, corpus: Path, out: Path, *more: str) -> list[str]:
    return [f"model.name_or_path={model}", "model.max_length=32", f"data.train={corpus}",
            "eval.data=null", "adapter.top_k=2", "train.max_steps=4", "train.batch_size=4",
            "train.cpu=true", "train.checkpoint_every=2", "train.routing_docs=0",
            f"output_dir={out}", *more]


@pytest.fixture()
def checkpointed(saved_models, corpus, recipe, tmp_path, monkeypatch) -> tuple[list, Path]:
    """A run stopped after its step-2 checkpoint: (its arguments, the checkpoint folder)."""
    import lastlayer.training.loop as loop

    real = loop.check_finite

    def stop_at_3(record, recipe_):
        if record["step"] == 3:
            raise KeyboardInterrupt
        real(record, recipe_)

    monkeypatch.setattr(loop, "check_finite", stop_at_3)
    args = args_for(saved_models["bert"], corpus, tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(recipe), *args])
    monkeypatch.setattr(loop, "check_finite", real)
    path, step = latest_checkpoint(tmp_path / "out.checkpoints")
    assert step == 2
    return args, path


def test_a_checkpoint_is_safetensors_and_json_only(checkpointed):
    _, folder = checkpointed
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format"] == "lastlayer-checkpoint/1" and manifest["step"] == 2
    assert manifest["scheduler"]["last_epoch"] == 2
    weights = load_file(folder / "adapter.safetensors")
    assert weights and all("lora_" in name for name in weights)  # the adapter, not the base
    optimizer = load_file(folder / "optimizer.safetensors")
    assert {name.rsplit(".", 1)[1] for name in optimizer} == {"step", "exp_avg", "exp_avg_sq"}
    for file in folder.iterdir():  # nothing a pickle loader could read
        assert not file.read_bytes().startswith(b"\x80"), file


def refuse(recipe: Path, args: list[str], capsys, monkeypatch) -> str:
    """Resume, expecting a one-line refusal; torch.load must not even be called."""
    def no_torch_load(*a, **kw):
        raise AssertionError("torch.load was called on a checkpoint")

    monkeypatch.setattr(torch, "load", no_torch_load)
    assert main(["train", str(recipe), *args, "train.resume=true"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("planted", [
    "random_states_0.pkl",        # where Accelerate keeps RNG states
    "optimizer.bin",              # Accelerate's optimizer pickle
    "optimizer.safetensors",      # a pickle under a trusted name
    "checkpoint.json",            # ... or as the manifest
])
def test_a_planted_pickle_is_refused_without_running(checkpointed, recipe, tmp_path, capsys,
                                                     monkeypatch, planted):
    args, folder = checkpointed
    marker = tmp_path / "marker"
    (folder / planted).write_bytes(pickle.dumps(Planted(marker)))
    line = refuse(recipe, args, capsys, monkeypatch)
    assert str(folder) in line and "Delete" in line
    if planted.endswith((".pkl", ".bin")):
        assert planted in line and "never unpickles" in line
    assert not marker.exists(), "the pickle ran"
    assert not (tmp_path / "out").exists()


def test_an_accelerate_checkpoint_is_refused(checkpointed, recipe, tmp_path, capsys,
                                             monkeypatch):
    """An older lastlayer's checkpoint (Accelerate's save_state layout) is never unpickled."""
    args, folder = checkpointed
    shutil.rmtree(folder)
    folder.mkdir()
    marker = tmp_path / "marker"
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (folder / name).write_bytes(pickle.dumps(Planted(marker)))
    (folder / "model.safetensors").write_bytes(b"")
    line = refuse(recipe, args, capsys, monkeypatch)
    assert "optimizer.bin" in line and "never unpickles" in line
    assert not marker.exists()


@pytest.mark.parametrize(("damage", "fragment"), [
    ("truncate", "not a readable safetensors file"),
    ("manifest", "not readable JSON"),
    ("format", "expected 'lastlayer-checkpoint/1'"),
    ("missing", "no rng.safetensors"),
])
def test_a_damaged_checkpoint_is_refused(checkpointed, recipe, capsys, monkeypatch, damage,
                                         fragment):
    args, folder = checkpointed
    if damage == "truncate":
        data = (folder / "adapter.safetensors").read_bytes()
        (folder / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "manifest":
        (folder / MANIFEST).write_text("{not json")
    elif damage == "format":
        manifest = json.loads((folder / MANIFEST).read_text())
        (folder / MANIFEST).write_text(json.dumps({**manifest, "format": "other/9"}))
    else:
        os.unlink(folder / "rng.safetensors")
    assert fragment in refuse(recipe, args, capsys, monkeypatch)


def test_a_checkpoint_of_another_adapter_is_refused(checkpointed, recipe, capsys, monkeypatch):
    args, _ = checkpointed
    line = refuse(recipe, [*args, "adapter.top_k=1"], capsys, monkeypatch)
    assert "not this run's trainable parameters" in line


def test_a_checkpoint_of_another_process_count_is_refused(checkpointed):
    from types import SimpleNamespace

    from lastlayer.training.checkpoint import CheckpointError, load_checkpoint

    _, folder = checkpointed
    two = SimpleNamespace(process_index=0, num_processes=2, scaler=None)
    with pytest.raises(CheckpointError, match="resume with the same number of processes"):
        load_checkpoint(folder, two, None, None, None)  # refused before anything is read
