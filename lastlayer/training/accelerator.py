"""The Accelerate ``Accelerator`` a recipe trains under, and the CPU checks it needs."""

from __future__ import annotations

import logging

import torch

from lastlayer.config import ConfigError, Recipe

log = logging.getLogger(__name__)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 / AMX), per oneDNN.

    Without it (e.g. AVX2-only CPUs) torch runs bf16 matmuls in a slow fallback. A torch
    build without oneDNN cannot tell: then this answers True (no warning on a guess).
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def make_accelerator(recipe: Recipe):
    """A fresh ``Accelerator`` for the recipe.

    Accelerate keeps its settings (mixed precision, device) in process-wide singletons and
    refuses a second ``Accelerator`` with other ones; they are reset here so that one
    process can train several recipes one after another. In a launched multi-process run
    the process group itself stays up (Accelerate reuses it). Refuses fp16 on CPU, where it
    silently runs fp32, and warns about bf16 on a CPU without native bf16 matmuls, where a
    step is many times slower than in fp32.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cfg = recipe.train
    on_cpu = cfg.cpu or not torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and on_cpu:
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
        cpu=cfg.cpu, mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
    )
