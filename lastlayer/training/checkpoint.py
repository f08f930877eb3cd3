"""Periodic checkpoints of a training run, and resuming from the newest one, without pickle.

Every ``train.checkpoint_every`` steps the loop saves the run's state to a ``step-N`` folder
next to the artifact (``<output_dir>.checkpoints/``); ``train.resume: true`` loads the
newest one, so an interrupted run continues exactly where it stopped (bit-exact on CPU).
The folder is removed once the artifact is saved.

A checkpoint is safetensors + JSON only, written here rather than by Accelerate's
``save_state`` (which pickles the optimizer, scheduler and RNG states, and whose loader
would unpickle whatever a folder holds). Loading one never unpickles anything: a folder
holding any other file (an Accelerate ``*.bin`` / ``*.pkl``, a planted pickle) is refused
before anything in it is read. A ``step-N`` folder holds:

- ``adapter.safetensors``: the trainable parameters by name (the frozen base is not saved);
- ``optimizer.safetensors``: the optimizer's per-parameter tensors, as ``state.I.KEY``;
- ``rng.safetensors``: torch's CPU (and CUDA) generator states and numpy's key, per process;
- ``checkpoint.json``: the format, the step, the optimizer's param groups and non-tensor
  state, the scheduler's and grad scaler's state dicts and Python's RNG state.

Each folder is written to a temporary name and renamed into place
(:func:`lastlayer.artifact.replace_folder`): a run killed mid-write leaves the previous
checkpoints as they were, and the next save or resume removes the leftover.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lastlayer.artifact import replace_folder
from lastlayer.config import ConfigError, Recipe

log = logging.getLogger(__name__)

FORMAT = "lastlayer-checkpoint/1"
MANIFEST = "checkpoint.json"
ADAPTER = "adapter.safetensors"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"
FILES = (MANIFEST, ADAPTER, OPTIMIZER, RNG)
"""Everything a checkpoint folder may hold; any other file makes it refused."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be written or may not be loaded; the message says what to do.

    A :class:`~lastlayer.config.ConfigError`, so ``lastlayer train`` reports it in one line
    (exit status 2).
    """


def checkpoint_root(recipe: Recipe) -> Path:
    """Where periodic checkpoints go: next to the artifact, removed once it is saved."""
    out = Path(recipe.output_dir)
    return out.parent / f"{out.name}.checkpoints"


def latest_checkpoint(root: Path) -> tuple[Path, int] | None:
    """The newest ``step-N`` folder under ``root`` and its step, if any."""
    found = [(int(m.group(1)), p) for p in root.glob("step-*")
             if (m := re.fullmatch(r"step-(\d+)", p.name))]
    if not found:
        return None
    step, path = max(found)
    return path, step


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes, by name: what a checkpoint saves of the model."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------
# Saving.


def save_checkpoint(recipe: Recipe, accelerator, step: int, model: nn.Module, optimizer,
                    scheduler) -> None:
    """Save the run's state after ``step`` optimizer steps (``step-NNNNNN``), atomically.

    Every process contributes its RNG states; the main process writes the folder.

    Raises:
        CheckpointError: The folder could not be written (a full disk, no permission); the
            earlier checkpoints are left as they were.
    """
    from accelerate.utils import gather_object

    rng = gather_object([_rng_state()])
    if accelerator.is_main_process:
        root = checkpoint_root(recipe)
        remove_leftovers(root)
        folder = root / f"step-{step:06d}"
        try:
            replace_folder(folder, lambda tmp: _write(tmp, step, model, optimizer, scheduler,
                                                      accelerator.scaler, rng))
        except OSError as err:
            raise CheckpointError(
                f"could not write the checkpoint {folder} ({err.strerror or err}); the earlier "
                f"checkpoints under {root} are intact. Free space there (or fix its "
                "permissions) and rerun with train.resume=true."
            ) from err
    accelerator.wait_for_everyone()


def _write(folder: Path, step: int, model: nn.Module, optimizer, scheduler, scaler,
           rng: list[dict[str, Any]]) -> None:
    """Write one checkpoint's four files into ``folder``."""
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable_state(model).items()},
              folder / ADAPTER)
    tensors, groups, extra = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, folder / OPTIMIZER)
    rng_tensors: dict[str, torch.Tensor] = {}
    python_states = []
    for rank, state in enumerate(rng):
        rng_tensors[f"torch.{rank}"] = state["torch"]
        rng_tensors[f"numpy.{rank}"] = torch.from_numpy(state["numpy"]["key"].astype(np.int64))
        for i, cuda in enumerate(state["cuda"]):
            rng_tensors[f"cuda.{rank}.{i}"] = cuda
        python_states.append({"python": state["python"],
                              "numpy": {k: v for k, v in state["numpy"].items() if k != "key"},
                              "cuda_devices": len(state["cuda"])})
    save_file(rng_tensors, folder / RNG)
    manifest = {
        "format": FORMAT, "step": step, "num_processes": len(rng),
        "optimizer": {"param_groups": groups, "state": extra},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": python_states,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list, dict]:
    """An optimizer ``state_dict`` as (tensors ``state.I.KEY``, param groups, other values)."""
    tensors, extra = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(index), {})[key] = value
    return tensors, state["param_groups"], extra


def _rng_state() -> dict[str, Any]:
    """This process's RNG states: Python's, numpy's, torch's CPU and CUDA generators."""
    version, key, gauss = random.getstate()
    kind, np_key, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(key), gauss],
        "numpy": {"kind": kind, "key": np_key, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


# ---------------------------------------------------------------------------------------
# Loading.


def maybe_resume(recipe: Recipe, accelerator, model: nn.Module, optimizer, scheduler) -> int:
    """Load the newest checkpoint when ``train.resume`` is set; return its step (or 0).

    Raises:
        CheckpointError: The newest checkpoint is not one lastlayer wrote (a pickle, a
            foreign file), is damaged, or does not fit this run.
    """
    if not recipe.train.resume:
        return 0
    root = checkpoint_root(recipe)
    if accelerator.is_main_process:
        remove_leftovers(root)
    accelerator.wait_for_everyone()
    found = latest_checkpoint(root)
    if found is None:
        log.warning("train.resume=true but no checkpoint under %s: starting from step 0.", root)
        return 0
    path, step = found
    load_checkpoint(path, accelerator, model, optimizer, scheduler)
    accelerator.print(f"Resumed from {path} (step {step}).")
    return step


def load_checkpoint(folder: Path, accelerator, model: nn.Module, optimizer, scheduler) -> int:
    """Restore a run's state from ``folder``; return its step. Never unpickles anything.

    Every file name is checked before any file is read: a folder holding anything but
    :data:`FILES` (an Accelerate checkpoint's ``*.bin`` / ``*.pkl`` pickles, say) is
    refused unread.

    Raises:
        CheckpointError: Says which file is wrong and what to do.
    """
    fix = (f"Delete {folder} (resuming then starts from the checkpoint before it, or from "
           "step 0), or set train.resume=false.")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in FILES)
    if foreign:
        raise CheckpointError(
            f"{folder} holds {', '.join(foreign)}, which no lastlayer checkpoint contains (a "
            "pickle from an Accelerate checkpoint, or a file someone put there); lastlayer "
            f"never unpickles checkpoints and loads nothing from this folder. {fix}")
    manifest = _read_manifest(folder, fix)
    rank = accelerator.process_index
    if manifest.get("num_processes") != accelerator.num_processes:
        raise CheckpointError(
            f"{folder} was written by {manifest.get('num_processes')} process(es), this run "
            f"has {accelerator.num_processes}; resume with the same number of processes.")
    try:
        weights = _tensors(folder / ADAPTER, fix)
        _load_weights(model, weights, folder, fix)
        optimizer.load_state_dict(_optimizer_state(_tensors(folder / OPTIMIZER, fix),
                                                   manifest["optimizer"], optimizer))
        scheduler.load_state_dict(manifest["scheduler"])
        if accelerator.scaler is not None and manifest["scaler"] is not None:
            accelerator.scaler.load_state_dict(manifest["scaler"])
        _set_rng(_tensors(folder / RNG, fix), manifest["rng"][rank], rank)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{folder}: does not fit this run ({type(err).__name__}: "
                              f"{err}). {fix}") from err
    return int(manifest["step"])


def _read_manifest(folder: Path, fix: str) -> dict[str, Any]:
    file = folder / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {MANIFEST} (an unfinished or foreign "
                              f"checkpoint). {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not readable JSON ({err}). {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CheckpointError(f"{file}: format {found!r}, expected {FORMAT!r} (written by "
                              f"another lastlayer?). {fix}")
    return manifest


def _tensors(file: Path, fix: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (safetensors checks the header before reading data)."""
    try:
        return load_file(file)
    except FileNotFoundError:
        raise CheckpointError(f"{file.parent}: no {file.name}. {fix}") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err}). {fix}") from None


def _load_weights(model: nn.Module, weights: dict[str, torch.Tensor], folder: Path,
                  fix: str) -> None:
    params = trainable_state(model)
    if weights.keys() != params.keys():
        missing, extra = sorted(params.keys() - weights.keys()), sorted(weights.keys() - params)
        raise CheckpointError(
            f"{folder / ADAPTER}: its tensors are not this run's trainable parameters "
            f"(missing {missing[:3]}, unexpected {extra[:3]}): another adapter.* setting or "
            f"model? {fix}")
    with torch.no_grad():
        for name, p in params.items():
            if weights[name].shape != p.shape:
                raise CheckpointError(f"{folder / ADAPTER}: {name} has shape "
                                      f"{tuple(weights[name].shape)}, the run's "
                                      f"{tuple(p.shape)}. {fix}")
            p.copy_(weights[name])


def _optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any],
                     optimizer) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from :func:`_flatten_optimizer`'s parts."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in saved["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group, current in zip(saved["param_groups"], optimizer.state_dict()["param_groups"],
                              strict=True):
        # JSON has no tuples: give back the current group's (betas=(0.9, 0.999), ...)
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v
                       for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def _set_rng(tensors: dict[str, torch.Tensor], saved: dict[str, Any], rank: int) -> None:
    version, key, gauss = saved["python"]
    random.setstate((version, tuple(key), gauss))
    numpy = saved["numpy"]
    np.random.set_state((numpy["kind"], tensors[f"numpy.{rank}"].numpy().astype(np.uint32),
                         numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(tensors[f"torch.{rank}"])
    cuda = [tensors[f"cuda.{rank}.{i}"] for i in range(saved["cuda_devices"])]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------
# Cleaning up.


def remove_leftovers(root: Path) -> None:
    """Remove what a save killed mid-write left under ``root`` (its hidden temporary folders)."""
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def remove_checkpoints(recipe: Recipe) -> None:
    """Remove the run's checkpoints (once its artifact is saved)."""
    shutil.rmtree(checkpoint_root(recipe), ignore_errors=True)
