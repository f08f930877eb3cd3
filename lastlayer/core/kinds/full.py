"""The ``full`` kind: the top-k blocks unfrozen, as PEFT's layer-selection tuner.

PEFT's ``LNTuningConfig`` pointed at whole top-k blocks keeps a trainable copy of each
block (``ln_tuning_layers[name]``) and saves it: exactly "unfreeze the top-k blocks" in
PEFT's format, so an artifact loads with ``PeftModel.from_pretrained``. Its private blocks
for inference are those trained copies, loaded from the artifact: plain blocks, k blocks
of memory, no overhead (``merge`` does not apply).

PEFT strips the adapter name from saved keys only when it is the second-to-last key
component (``q_proj.lora_A.default.weight``). A full-kind adapter wraps whole blocks, so its
keys keep the name in the middle (``layer.3.ln_tuning_layers.default.output.dense.weight``)
and PEFT silently loads nothing under any other name. Artifacts therefore always store the
name "default" (what ``PeftModel.from_pretrained`` uses): :func:`fix_saved` renames the keys
of an adapter saved under another name, and :func:`load_named` renames them back when
loading under another name.
"""

from __future__ import annotations

import math
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from lastlayer import artifact
from lastlayer.config import AdapterConfig
from lastlayer.core.kinds.common import (
    blocks_of,
    frozen,
    is_quantized,
    load_onto_copies,
    params_change,
    top_blocks,
    top_indices,
    with_blocks,
)
from lastlayer.core.layers import top_k_module_names
from lastlayer.core.split import structural_copy
from lastlayer.core.weights_check import check_adapter_weights

NAME = "full"
PEFT_TYPE = "LN_TUNING"
always_merged = True
"""Private blocks are the trained copies: plain blocks whatever ``merge`` says."""

WEIGHTS_NAME = artifact.WEIGHTS


def targets(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """The explicit names of the top-k blocks (each is copied and trained whole)."""
    return top_k_module_names(model, cfg.top_k)


def peft_config(model: nn.Module, cfg: AdapterConfig):
    """The ``LNTuningConfig`` that keeps a trainable copy of each top-k block."""
    from peft import LNTuningConfig

    return LNTuningConfig(target_modules=targets(model, cfg))


def _renamed(state: dict, old: str, new: str) -> dict:
    """Swap the adapter name inside full-kind (LN tuning) state-dict keys."""
    return {
        k.replace(f".ln_tuning_layers.{old}.", f".ln_tuning_layers.{new}."): v
        for k, v in state.items()
    }


def fix_saved(folder: Path, adapter_name: str) -> None:
    """Store the weights of an adapter saved under ``adapter_name`` as "default"."""
    weights = folder / WEIGHTS_NAME
    save_file(_renamed(load_file(weights), adapter_name, "default"), weights,
              metadata={"format": "pt"})


def expects_missing_keys(name: str) -> bool:
    """PEFT cannot match the keys under a name other than "default" (:func:`load_named`
    loads them): its "missing adapter keys" warning is expected then."""
    return name != "default"


def load_named(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the artifact's weights (stored as "default") into adapter ``name`` of ``model``.

    Raises:
        RuntimeError: The weights do not fit the model.
    """
    if name == "default":
        return
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():  # a Hub id rather than a folder
        from huggingface_hub import hf_hub_download

        weights = Path(hf_hub_download(str(path), WEIGHTS_NAME))
    state = _renamed(load_file(weights), "default", name)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if f".ln_tuning_layers.{name}." in k]
    if result.unexpected_keys or missing or not state:
        raise RuntimeError(
            f"{path}: the full-kind adapter weights do not fit this base model "
            f"(unexpected: {result.unexpected_keys[:3]}, missing: {missing[:3]})."
        )


def private_blocks(base: nn.Module, folder: str | Path, top_k: int,
                   merge: bool = True) -> list[nn.Module]:
    """The trained copies of ``base``'s top-k blocks, loaded from the artifact at ``folder``.

    The artifact saves every tensor of each trained block, so each private block is a
    structural copy of the base's block (new modules) whose tensors are *replaced* by the
    artifact's (``load_state_dict(assign=True)``, on the base's device and in its dtypes):
    nothing of the base is copied, about 5x faster than letting PEFT deep-copy each block
    and load into the copy (a cold full head under a memory budget waits for this). On a
    quantized base, or where the saved tensors do not name every tensor of the blocks,
    PEFT loads it as it saved it (``ln_tuning_layers["default"]`` of a container of
    structural copies). ``merge`` is ignored. The base is left as it was.
    """
    blocks = None if is_quantized(base) else _assigned_blocks(base, folder, top_k)
    if blocks is None:
        model = load_onto_copies(base, folder, top_k, deep=False)
        layers = blocks_of(model.base_model.model, base, top_k)
        blocks = [layer.ln_tuning_layers["default"] for layer in layers]
    return frozen(base, blocks)


def _assigned_blocks(base: nn.Module, folder: str | Path, top_k: int) -> list[nn.Module] | None:
    """Structural copies of the top-k blocks holding the artifact's tensors, or None where
    its keys are not exactly each block's state (then PEFT loads it)."""
    check_adapter_weights(base, folder, top_k)  # names and shapes, before anything is read
    prefix, indices = top_indices(base, top_k)
    originals = base.get_submodule(prefix)
    state = load_file(Path(folder) / WEIGHTS_NAME)
    blocks = []
    for i in indices:
        block = structural_copy(originals[i])
        head = f"base_model.model.{prefix}.{i}.ln_tuning_layers.default."
        own = block.state_dict()
        saved = {key[len(head):]: tensor for key, tensor in state.items() if key.startswith(head)}
        if saved.keys() != own.keys():
            return None
        block.load_state_dict({key: tensor.to(device=own[key].device, dtype=own[key].dtype)
                               for key, tensor in saved.items()}, assign=True)
        blocks.append(block)
    return blocks


def private_blocks_from_model(model: nn.Module, top_k: int) -> list[nn.Module]:
    """The trained blocks of a model the adapter is attached to for training (training's
    own copy, PEFT-wrapped in place): PEFT's trainable copy of each top-k block
    (``ln_tuning_layers["default"]``), what its wrapper runs and what the artifact saves,
    so they are the blocks :func:`private_blocks` loads back (no copy is made)."""
    return [layer.ln_tuning_layers["default"] for layer in top_blocks(model, top_k)]


def merged_model(base: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    """``base`` with the trained ``blocks`` in place of its top-k blocks (PEFT's own
    ``merge_and_unload`` handles only norm layers: on a whole block it fails looking for
    the block's ``weight``)."""
    return with_blocks(base, len(blocks), blocks)


def block_change(block: nn.Module, adapter_name: str) -> float:
    """``||copy − original||_F / ||original||_F`` over every parameter of a block PEFT
    wrapped (0.0 for a block it did not, or without this adapter)."""
    from peft.tuners.ln_tuning.layer import LNTuningLayer

    if not isinstance(block, LNTuningLayer) or adapter_name not in block.ln_tuning_layers:
        return 0.0
    base, copy = block.base_layer, block.ln_tuning_layers[adapter_name]
    if adapter_name in block.merged_adapters:  # merging swaps the two
        base, copy = copy, base
    return private_change(base, copy)


def private_change(original: nn.Module, private: nn.Module) -> float:
    """``||private − original||_F / ||original||_F`` over every parameter."""
    delta, norm = params_change(original, private)
    return math.sqrt(delta / norm) if norm > 0 else 0.0
