"""Interruption and faults: a run killed (SIGKILL) anywhere resumes bit-exact; a failing
write or a NaN loss stops it with a clear error and loses nothing already saved.

The killed runs are real subprocesses (``tests/train_worker.py``) that SIGKILL themselves at
a chosen point; each then resumes in-process with ``train.resume=true`` and must end with
the very tensors of an uninterrupted run with the same seed (CPU, ``torch.equal``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import medical_sample
from safetensors.torch import load_file
from train_worker import train_in_child

import lastlayer.training.checkpoint as checkpoint
import lastlayer.training.loop as loop
from lastlayer.cli import main
from lastlayer.training.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "train_worker.py"
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return medical_sample(tmp_path_factory.mktemp("data") / "medical.jsonl", docs=60)


def overrides(model: Path, corpus: Path, out: Path, cached: bool, *more: str) -> list[str]:
    """A 6-step run on tiny BERT with a checkpoint every 2 steps (no eval, no routing)."""
    return [
        f"model.name_or_path={model}", "model.max_length=32", f"data.train={corpus}",
        "eval.data=null", "adapter.top_k=2", "train.max_steps=6", "train.batch_size=4",
        "train.lr=1e-3", "train.cpu=true", "train.checkpoint_every=2", "train.routing_docs=0",
        f"train.cached_pairs={16 if cached else 0}", "seed=0", f"output_dir={out}", *more,
    ]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text("{}\n", encoding="utf-8")
    return path


def run_cli(recipe: Path, args: list[str]) -> int:
    return main(["train", str(recipe), *args])


def killed_run(recipe: Path, args: list[str], kill_at: str, cwd: Path) -> None:
    """Train in a forked child that SIGKILLs itself at ``kill_at``; it must die of it."""
    status = train_in_child([str(recipe), *args], kill_at)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_the_worker_dies_of_sigkill_as_a_fresh_process(saved_models, corpus, recipe_file,
                                                       tmp_path):
    """The same kill in a new interpreter (``python tests/train_worker.py``), not a fork."""
    out = tmp_path / "out"
    env = {**os.environ, "LASTLAYER_TEST_KILL_AT": "step:3", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKER.parent)])}
    done = subprocess.run([sys.executable, str(WORKER), str(recipe_file),
                           *overrides(saved_models["bert"], corpus, out, False)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert latest_checkpoint(tmp_path / "out.checkpoints")[1] == 2 and not out.exists()


@pytest.fixture(scope="module")
def straight(saved_models, corpus, recipe_file, tmp_path_factory) -> dict[bool, dict]:
    """The uninterrupted runs' weights, fresh and cached views."""
    found = {}
    for cached in (False, True):
        out = tmp_path_factory.mktemp("straight") / "a"
        assert run_cli(recipe_file, overrides(saved_models["bert"], corpus, out, cached)) == 0
        found[cached] = load_file(out / WEIGHTS)
    return found


def assert_same_weights(out: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_file(out / WEIGHTS)
    assert got.keys() == expected.keys()
    for key in got:
        assert torch.equal(got[key], expected[key]), key


def assert_one_error_line(err: str) -> None:
    """The CLI's message is one line (progress bars aside), and there is no traceback."""
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize(("kill_at", "cached", "resumes_from"), [
    ("cache:2", True, None),        # building the cached pairs: no checkpoint yet
    ("step:3", False, 2),           # mid-step 3 (after backward, before the update)
    ("checkpoint:5", False, 2),     # writing step 4's checkpoint (its 2nd of 3 files)
    ("save:1", False, 4),           # the final save, every file written, nothing renamed
])
def test_killed_run_resumes_bit_exact(saved_models, corpus, recipe_file, straight, tmp_path,
                                      capsys, kill_at, cached, resumes_from):
    out = tmp_path / "out"
    args = overrides(saved_models["bert"], corpus, out, cached)
    killed_run(recipe_file, args, kill_at, tmp_path)
    assert not out.exists(), "no artifact under the final name after a kill"
    found = latest_checkpoint(tmp_path / "out.checkpoints")
    assert (found[1] if found else None) == resumes_from
    assert run_cli(recipe_file, [*args, "train.resume=true"]) == 0
    assert_same_weights(out, straight[cached])
    assert not (tmp_path / "out.checkpoints").exists()
    printed = capsys.readouterr().out
    assert (f"(step {resumes_from})" in printed) == (resumes_from is not None)


@pytest.mark.parametrize("kill_at", ["save:1", "swap:1"])
def test_killed_final_save_leaves_the_previous_artifact_or_the_new_one(
        saved_models, corpus, recipe_file, straight, tmp_path, kill_at):
    out = tmp_path / "out"
    first = overrides(saved_models["bert"], corpus, out, False, "seed=1")
    assert run_cli(recipe_file, first) == 0
    before = digest(out)
    args = overrides(saved_models["bert"], corpus, out, False, "overwrite=true")
    killed_run(recipe_file, args, kill_at, tmp_path)
    assert out.is_dir()
    if kill_at == "save:1":
        assert digest(out) == before, "the previous artifact, intact"
    else:  # killed after the exchange: the new artifact, whole
        assert_same_weights(out, straight[False])
    assert run_cli(recipe_file, [*args, "train.resume=true"]) == 0
    assert_same_weights(out, straight[False])


def test_full_disk_during_a_checkpoint(saved_models, corpus, recipe_file, tmp_path,
                                       monkeypatch, capsys):
    out = tmp_path / "out"
    args = overrides(saved_models["bert"], corpus, out, False)
    real = checkpoint.save_file
    calls = []

    def save_file(tensors, path, *rest, **kwargs):
        calls.append(path)
        if len(calls) == 5:  # step 4's optimizer file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(tensors, path, *rest, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    assert run_cli(recipe_file, args) == 2
    err = capsys.readouterr().err
    assert "could not write the checkpoint" in err and "No space left on device" in err
    assert_one_error_line(err)
    root = tmp_path / "out.checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-000002"], "no half-written folder"
    assert not out.exists()
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert run_cli(recipe_file, [*args, "train.resume=true"]) == 0  # step 2 is usable


def test_full_disk_during_the_final_save(saved_models, corpus, recipe_file, straight,
                                         tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_cli(recipe_file, overrides(saved_models["bert"], corpus, out, False,
                                          "seed=1")) == 0
    before = digest(out)
    args = overrides(saved_models["bert"], corpus, out, False, "overwrite=true")
    real = Path.write_text

    def write_text(self, *a, **kw):
        if self.name == "README.md" and ".tmp-" in self.parent.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert run_cli(recipe_file, args) == 2
    err = capsys.readouterr().err
    assert "could not save the artifact" in err and "No space left on device" in err
    assert_one_error_line(err)
    assert digest(out) == before, "the previous artifact, intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.checkpoints"], \
        "no temporary folder left behind"
    monkeypatch.setattr(Path, "write_text", real)
    assert run_cli(recipe_file, [*args, "train.resume=true"]) == 0  # from step 4
    assert_same_weights(out, straight[False])


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(saved_models, corpus,
                                                              recipe_file, tmp_path,
                                                              monkeypatch, capsys):
    real = loop.info_nce
    steps = []

    def diverging(a, b, *rest):
        loss, acc = real(a, b, *rest)
        steps.append(1)
        return (loss * float("nan") if len(steps) >= 5 else loss), acc

    monkeypatch.setattr(loop, "info_nce", diverging)
    out = tmp_path / "out"
    assert run_cli(recipe_file, overrides(saved_models["bert"], corpus, out, False)) == 2
    err = capsys.readouterr().err
    assert "step 5: the training loss is nan" in err
    assert "train.lr=0.001" in err and "step-000004" in err
    assert_one_error_line(err)
    assert not out.exists()
    assert latest_checkpoint(tmp_path / "out.checkpoints")[1] == 4


def test_nan_loss_message_names_the_precision_when_mixed(tmp_path):
    from lastlayer.config import load_recipe

    recipe = load_recipe(None, [f"output_dir={tmp_path / 'o'}", "data.train=x.txt",
                                 "train.mixed_precision=bf16"])
    with pytest.raises(loop.TrainingDiverged, match=r"step 3: .* inf.*mixed_precision=bf16"):
        loop.check_finite({"step": 3, "loss": float("inf")}, recipe)


@pytest.mark.distributed
def test_two_processes_killed_mid_step_resume_bit_exact(saved_models, corpus, recipe_file,
                                                        tmp_path):
    """torchrun, 2 CPU processes: each one's RNG state is checkpointed and given back."""
    import socket

    def torchrun(script: list[str], out: Path, *more: str, kill_at: str = "") -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LASTLAYER_TEST_KILL_AT=kill_at,
                   PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKER.parent)]))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(port), *script,
               str(recipe_file), *overrides(saved_models["bert"], corpus, out, False, *more)]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True,
                              timeout=300).returncode

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert torchrun(["-m", "lastlayer", "train"], straight) == 0
    assert torchrun([str(WORKER)], resumed, kill_at="step:3") != 0
    path, step = latest_checkpoint(tmp_path / "resumed.checkpoints")
    assert step == 2 and {"torch.0", "torch.1"} <= load_file(path / "rng.safetensors").keys()
    assert torchrun(["-m", "lastlayer", "train"], resumed, "train.resume=true") == 0
    assert_same_weights(resumed, load_file(straight / WEIGHTS))


def test_nan_weights_are_never_checkpointed(saved_models, corpus, recipe_file, tmp_path,
                                            monkeypatch, capsys):
    """A finite loss followed by an update to NaN: the run stops before step 4's checkpoint."""
    real = torch.optim.AdamW.step
    calls = []

    def poisoned(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "out"
    assert run_cli(recipe_file, overrides(saved_models["bert"], corpus, out, False)) == 2
    err = capsys.readouterr().err
    assert "step 4: a trained weight is NaN or inf after the update" in err
    assert "step-000002" in err
    assert_one_error_line(err)
    assert latest_checkpoint(tmp_path / "out.checkpoints")[1] == 2


def test_a_killed_save_leaves_nothing_behind_after_the_next_run(saved_models, corpus,
                                                                recipe_file, tmp_path):
    out = tmp_path / "out"
    args = overrides(saved_models["bert"], corpus, out, False)
    killed_run(recipe_file, args, "save:1", tmp_path)
    assert run_cli(recipe_file, [*args, "train.resume=true"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
