"""What every kind does the same way: copy the base's top-k blocks into a small container,
let PEFT load an artifact onto it (never onto the base), take the blocks back out, and
measure weights (bitsandbytes weights dequantized first).

PEFT injects an adapter by replacing modules inside the model it is given. Here it is
given a container holding *copies* of the base's top-k blocks, named as in the base
(``encoder.layer.4``, ...) so the artifact's module names and weight keys match.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lastlayer.core.layers import find_layer_stack
from lastlayer.core.split import base_of, structural_copy
from lastlayer.core.weights_check import check_adapter_weights


def ignore_block_size_warning() -> None:
    """The full kind wraps whole blocks; PEFT wants their in/out sizes only for display."""
    warnings.filterwarnings("ignore", message="Unsupported layer type")


def top_indices(base: nn.Module, top_k: int) -> tuple[str, list[int]]:
    """The base's block-list name and the indices L−k … L−1."""
    stack = find_layer_stack(base)
    return stack.prefix, list(range(stack.num_layers - top_k, stack.num_layers))


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
    for flag in QUANTIZED_FLAGS:
        if getattr(base, flag, False):
            setattr(root, flag, True)
    return root


QUANTIZED_FLAGS = ("is_loaded_in_8bit", "is_loaded_in_4bit")
"""The attributes transformers sets on a bitsandbytes-quantized model."""


def is_quantized(base: nn.Module) -> bool:
    """Whether ``base`` is bitsandbytes-quantized (8-bit or 4-bit)."""
    return any(getattr(base, flag, False) for flag in QUANTIZED_FLAGS)


def load_onto_copies(base: nn.Module, folder: str | Path, top_k: int, deep: bool):
    """``PeftModel.from_pretrained`` on a container of copies of ``base``'s top-k blocks.

    Args:
        base: The frozen base model (left as it is: modules, weights, flags).
        folder: The artifact folder (already validated).
        top_k: The adapter's k.
        deep: ``copy.deepcopy`` the blocks (their weights may then be changed in place,
            e.g. merged into) rather than :func:`structural_copy` them (new module objects
            over the base's weight tensors).

    Returns:
        The ``PeftModel`` around the container.
    """
    from peft import PeftModel

    check_adapter_weights(base, folder, top_k)  # names and shapes, before PEFT reads them
    prefix, indices = top_indices(base, top_k)
    originals = list(base.get_submodule(prefix))
    memo: dict[int, nn.Module] = {}
    copies = {i: copy.deepcopy(originals[i]) if deep else structural_copy(originals[i], memo)
              for i in indices}
    with warnings.catch_warnings():
        ignore_block_size_warning()
        return PeftModel.from_pretrained(_container(base, copies), str(folder),
                                         adapter_name="default")


def blocks_of(container: nn.Module, base: nn.Module, top_k: int) -> list[nn.Module]:
    """The blocks L−k … L−1 a container holds (by the base's block-list name)."""
    prefix, indices = top_indices(base, top_k)
    held = container.get_submodule(prefix)
    return [held[str(i)] for i in indices]


def top_blocks(model: nn.Module, top_k: int) -> list[nn.Module]:
    """A model's (a ``PeftModel``'s base's) own blocks L−k … L−1: the modules themselves,
    not copies."""
    model = base_of(model)
    prefix, indices = top_indices(model, top_k)
    held = model.get_submodule(prefix)
    return [held[i] for i in indices]


def frozen(base: nn.Module, blocks: list[nn.Module]) -> list[nn.Module]:
    """``blocks`` in eval mode with every weight of their own frozen (the base's already are).

    Every module object in a block is a copy, so the base's flags stay put."""
    shared = {id(p) for p in base.parameters()}
    for block in blocks:
        block.eval()
        for param in block.parameters():
            if id(param) not in shared:
                param.requires_grad_(False)
    return blocks


def with_blocks(base: nn.Module, top_k: int, blocks: list[nn.Module]) -> nn.Module:
    """``base`` with ``blocks`` in place of its top-k blocks (changes ``base``: for export,
    which owns the base it loaded)."""
    prefix, indices = top_indices(base, top_k)
    held = base.get_submodule(prefix)
    for i, block in zip(indices, blocks, strict=True):
        held[i] = block
    return base


def dense_params(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, float32 tensor) for every parameter, bitsandbytes linear weights dequantized."""
    from peft.utils.integrations import dequantize_module_weight

    for mod_name, mod in module.named_modules():
        for name, param in mod.named_parameters(recurse=False):
            if name == "weight" and isinstance(mod, nn.Linear):
                param = dequantize_module_weight(mod)
            yield f"{mod_name}.{name}", param.detach().float()


def params_change(original: nn.Module, changed: nn.Module) -> tuple[float, float]:
    """(squared norm of ``changed − original``, squared norm of ``original``) over every
    parameter of two blocks of the same structure."""
    base_params = dict(dense_params(original))
    delta = sum(float((t - base_params[n]).pow(2).sum()) for n, t in dense_params(changed))
    norm = sum(float(t.pow(2).sum()) for t in base_params.values())
    return delta, norm


def peft_leftovers(model: nn.Module) -> list[str]:
    """Weight names in ``model`` that belong to a PEFT wrapper (LoRA weights, LN-tuning
    copies, wrapped base layers): none may be left in a merged model."""
    return [n for n in model.state_dict() if "lora_" in n or "ln_tuning_layers" in n
            or ".base_layer." in n]
