"""The ``lora`` kind: PEFT LoRA on the linear layers inside the top-k blocks.

PEFT's ``layers_to_transform`` silently matches no layer, or the wrong ones, on some
naming schemes, so the ``LoraConfig`` names the modules itself (``target_modules`` = the
explicit names of the top-k linears). Private blocks come in two forms:

- unmerged: structural copies (new module objects, the base's weight tensors) in which PEFT
  wraps the linear layers; costs the LoRA weights only (a few MB) and runs the LoRA matmuls
  at every call; the only choice on a quantized base, and the exact computation of the
  PEFT model training measured;
- merged: deep copies of the blocks into which the LoRA update is merged; costs k blocks
  of weights and runs as fast as the base.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from lastlayer.config import AdapterConfig
from lastlayer.core.kinds.common import (
    blocks_of,
    dense_params,
    frozen,
    load_onto_copies,
    top_blocks,
    with_blocks,
)
from lastlayer.core.layers import top_k_linear_names

NAME = "lora"
PEFT_TYPE = "LORA"
always_merged = False
"""Private blocks may stay unmerged (LoRA layers around the base's weights)."""

_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B",
                  "lora_magnitude_vector")


def targets(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """The explicit names of the linear layers LoRA wraps in the top-k blocks."""
    return top_k_linear_names(model, cfg.top_k, cfg.target_modules)


def peft_config(model: nn.Module, cfg: AdapterConfig):
    """The ``LoraConfig`` of a top-k LoRA adapter for ``model``."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=targets(model, cfg), bias="none")


def fix_saved(folder: Path, adapter_name: str) -> None:
    """Nothing to do: PEFT strips any adapter name from LoRA weight keys when saving."""


def load_named(model: nn.Module, path: str | Path, name: str) -> None:
    """Nothing to do: PEFT loads LoRA weights under any adapter name."""


def expects_missing_keys(name: str) -> bool:
    """Whether PEFT warns of missing keys when loading under ``name`` (never for LoRA)."""
    return False


def private_blocks(base: nn.Module, folder: str | Path, top_k: int,
                   merge: bool) -> list[nn.Module]:
    """The adapter at ``folder`` on private copies of ``base``'s top-k blocks.

    Args:
        base: The (frozen, eval-mode) model the adapter was trained on; left as it was.
        folder: The artifact folder (already validated).
        top_k: The adapter's k.
        merge: Merge into deep copies (True) or wrap structural copies (False).

    Returns:
        Blocks L−k … L−1 with the adapter applied, in eval mode and frozen.
    """
    model = load_onto_copies(base, folder, top_k, deep=merge)
    container = model.merge_and_unload() if merge else model.base_model.model
    return frozen(base, blocks_of(container, base, top_k))


def private_blocks_from_model(model: nn.Module, top_k: int) -> list[nn.Module]:
    """The trained blocks of a model the adapter is attached to for training (training's
    own copy, PEFT-wrapped in place): its top-k blocks, LoRA layers and all, unmerged, the
    very modules training updated (no copy: the head sees every later change)."""
    return top_blocks(model, top_k)


def merged_model(base: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    """``base`` with merged private ``blocks`` (from ``private_blocks(merge=True)``) in
    place of its top-k blocks."""
    return with_blocks(base, len(blocks), blocks)


def _base_sq_norm(block: nn.Module) -> float:
    """Squared Frobenius norm of a block's original parameters (LoRA weights excluded)."""
    total = 0.0
    for name, tensor in dense_params(block):
        if not any(part in name.split(".") for part in _ADAPTER_PARTS):
            total += float(tensor.pow(2).sum())
    return total


def block_change(block: nn.Module, adapter_name: str) -> float:
    """``||ΔW||_F / ||W||_F`` over a LoRA-wrapped block: ΔW = B @ A * scaling (PEFT's
    ``get_delta_weight``) on each wrapped linear, zero elsewhere (0.0: no adapter here)."""
    from peft.tuners.lora import LoraLayer

    delta = sum(
        float(m.get_delta_weight(adapter_name).float().pow(2).sum())
        for m in block.modules()
        if isinstance(m, LoraLayer) and adapter_name in m.lora_A
    )
    if delta == 0.0:
        return 0.0
    norm = _base_sq_norm(block)
    return math.sqrt(delta / norm) if norm > 0 else 0.0


def private_change(original: nn.Module, private: nn.Module) -> float:
    """:func:`block_change` of an unmerged private block (``original`` is not needed: the
    block holds the base's weights and the LoRA ones)."""
    return block_change(private, "default")
