"""An adapter's private top-k blocks, built once from its artifact, never touching the base.

PEFT injects an adapter by replacing modules inside the model it is given, and holds one
adapter type per model (LoRA or LN tuning). Here it is given a small container holding
*copies* of the base's top-k blocks, named as in the base (``encoder.layer.4``, ...) so
the artifact's module names and weight keys match, and never the base itself:

- LoRA, unmerged: structural copies (new module objects, the base's weight tensors) in
  which PEFT wraps the linear layers; costs the LoRA weights only (a few MB) and runs the
  LoRA matmuls at every call. The only choice on a quantized base.
- LoRA, merged: deep copies of the blocks into which the LoRA update is merged; costs k
  blocks of weights and runs as fast as the base.
- full (PEFT LN tuning): PEFT keeps a trained copy of each block; those copies are the
  adapter's blocks (k blocks of weights, like merged).

Each adapter's blocks are then run by a :class:`~lastlayer.core.split.TopKHead` over the
base (its masks, positions and final norm), from block L−k's inputs.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from torch import nn

from lastlayer.core.layers import find_layer_stack
from lastlayer.core.split import structural_copy


def _container(base: nn.Module, blocks: dict[int, nn.Module]) -> nn.Module:
    """A module holding ``blocks`` under the base's block-list name (``encoder.layer.4``).

    It mirrors the base's quantization flags, which PEFT reads to pick its bitsandbytes
    LoRA layers.
    """
    prefix = find_layer_stack(base).prefix
    root = node = nn.Module()
    *parents, last = prefix.split(".")
    for part in parents:
        child = nn.Module()
        node.add_module(part, child)
        node = child
    node.add_module(last, nn.ModuleDict({str(i): block for i, block in blocks.items()}))
    for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit"):
        if getattr(base, flag, False):
            setattr(root, flag, True)
    return root


def _blocks_of(container: nn.Module, prefix: str, indices: list[int]) -> list[nn.Module]:
    held = container.get_submodule(prefix)
    return [held[str(i)] for i in indices]


def private_blocks(base: nn.Module, folder: str | Path, kind: str, top_k: int,
                   merge: bool) -> list[nn.Module]:
    """The adapter at ``folder`` applied to private copies of ``base``'s top-k blocks.

    Args:
        base: The (frozen, eval-mode) transformers model the adapter was trained on.
        folder: The artifact folder (already validated).
        kind: ``lora`` or ``full``.
        top_k: The adapter's k.
        merge: LoRA only: merge into deep copies (True) or wrap structural copies (False).

    Returns:
        The k blocks L−k … L−1 with the adapter applied, in eval mode and frozen; the base
        is left as it was (modules, weights, flags).
    """
    from peft import PeftModel

    stack = find_layer_stack(base)
    originals = list(base.get_submodule(stack.prefix))
    indices = list(range(stack.num_layers - top_k, stack.num_layers))
    deep = kind == "lora" and merge
    memo: dict[int, nn.Module] = {}
    copies = {i: copy.deepcopy(originals[i]) if deep else structural_copy(originals[i], memo)
              for i in indices}
    container = _container(base, copies)
    with warnings.catch_warnings():
        # The full kind wraps whole blocks; PEFT wants their sizes only for display.
        warnings.filterwarnings("ignore", message="Unsupported layer type")
        model = PeftModel.from_pretrained(container, str(folder), adapter_name="default")
    if kind == "full":  # PEFT's trained copy of each block, loaded from the artifact
        layers = _blocks_of(model.base_model.model, stack.prefix, indices)
        blocks = [layer.ln_tuning_layers["default"] for layer in layers]
    elif merge:
        blocks = _blocks_of(model.merge_and_unload(), stack.prefix, indices)
    else:
        blocks = _blocks_of(model.base_model.model, stack.prefix, indices)
    shared = {id(p) for p in base.parameters()}
    for block in blocks:
        block.eval()  # every module object in a block is a copy: the base's flags stay put
        for param in block.parameters():
            if id(param) not in shared:  # the base's own weights are frozen already
                param.requires_grad_(False)
    return blocks
