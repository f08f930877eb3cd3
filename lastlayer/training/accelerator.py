"""The Accelerate ``Accelerator`` a recipe trains under, and the precision checks it needs."""

from __future__ import annotations

import logging

import torch

from lastlayer.config import ConfigError, Recipe
from lastlayer.core.precision import cpu_has_fast_bf16, detect, training_precision

__all__ = ["cpu_has_fast_bf16", "make_accelerator"]

log = logging.getLogger(__name__)


def make_accelerator(recipe: Recipe):
    """A fresh ``Accelerator`` for the recipe.

    Accelerate keeps its settings (mixed precision, device) in process-wide singletons and
    refuses a second ``Accelerator`` with other ones; they are reset here so that one
    process can train several recipes one after another. In a launched multi-process run
    the process group itself stays up (Accelerate reuses it). Refuses fp16 on CPU, where it
    silently runs fp32, and warns about bf16 on a CPU without native bf16 matmuls, where a
    step is many times slower than in fp32. ``train.mixed_precision: auto`` (the default)
    is bf16 where the hardware multiplies bf16 natively, else no
    (:mod:`lastlayer.core.precision`); the choice and its reason are logged.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cfg = recipe.train
    on_cpu = cfg.cpu or not torch.cuda.is_available()
    mixed_precision = training_precision(cfg.mixed_precision, on_cpu)
    if cfg.mixed_precision != mixed_precision:
        log.info("train.mixed_precision=auto -> %s (%s)", mixed_precision,
                 detect("cpu" if on_cpu else "cuda"))
    if mixed_precision == "fp16" and on_cpu:
        raise ConfigError(
            "train.mixed_precision=fp16 on CPU silently runs in fp32; use no (or bf16 on a "
            "CPU with AVX512-BF16 or AMX)."
        )
    if cfg.mixed_precision == "bf16" and on_cpu and not cpu_has_fast_bf16():
        log.warning(
            "train.mixed_precision=bf16 on a CPU without native bf16 matmuls (no AVX512-BF16 "
            "or AMX): torch falls back to slow kernels and a training step can be 10-20x "
            "slower than fp32 (README, 'Speed and memory'). Set train.mixed_precision=no here."
        )
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        cpu=cfg.cpu, mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
    )
