"""Periodic checkpoints of a training run, and resuming from the newest one.

Every ``train.checkpoint_every`` steps the loop saves Accelerate's state (the adapter's
weights only, the optimizer, the scheduler and every RNG) to ``step-N`` folders next to the
artifact (``<output_dir>.checkpoints/``); ``train.resume: true`` loads the newest one, so an
interrupted run continues exactly where it stopped. The folder is removed once the artifact
is saved.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from lastlayer.config import Recipe

log = logging.getLogger(__name__)


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


def keep_trainable_weights_only(models, weights, output_dir) -> None:
    """Accelerate save hook: checkpoint the adapter's weights, not the frozen base."""
    for i, model in enumerate(models):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        weights[i] = {k: v for k, v in weights[i].items() if k in trainable}


def save_checkpoint(recipe: Recipe, accelerator, step: int) -> None:
    """Save the run's state after ``step`` optimizer steps (``step-NNNNNN``)."""
    accelerator.save_state(str(checkpoint_root(recipe) / f"step-{step:06d}"))


def maybe_resume(recipe: Recipe, accelerator) -> int:
    """Load the newest checkpoint when ``train.resume`` is set; return its step (or 0)."""
    if not recipe.train.resume:
        return 0
    found = latest_checkpoint(checkpoint_root(recipe))
    if found is None:
        log.warning("train.resume=true but no checkpoint under %s: starting from step 0.",
                    checkpoint_root(recipe))
        return 0
    path, step = found
    accelerator.load_state(str(path), strict=False)  # the checkpoint holds adapter weights only
    accelerator.print(f"Resumed from {path} (step {step}).")
    return step


def remove_checkpoints(recipe: Recipe) -> None:
    """Remove the run's checkpoints (once its artifact is saved)."""
    shutil.rmtree(checkpoint_root(recipe), ignore_errors=True)
