"""Locate the stack of transformer blocks in a model and name its top-k blocks.

Pure functions over ``torch.nn.Module`` trees: no transformers / peft imports, so
they work on any Hugging Face model (BERT, MPNet, RoBERTa, DistilBERT, ModernBERT,
Llama, ...) and on bitsandbytes-quantized ones, whose ``Linear8bitLt`` and
``Linear4bit`` subclass ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

STACK_NAMES: tuple[str, ...] = ("layer", "layers", "h", "block", "blocks")
"""Last name components that mark an ``nn.ModuleList`` as the block stack."""


class LayerStackError(ValueError):
    """The block stack cannot be found, or a layer request does not fit it."""


@dataclass(frozen=True)
class LayerStack:
    """Where the transformer blocks of a model live.

    Attributes:
        prefix: Dotted name of the ``nn.ModuleList`` holding the blocks, e.g.
            ``"encoder.layer"``, ``"layers"``, ``"model.layers"``,
            ``"transformer.layer"``.
        num_layers: Number of blocks in that list.
    """

    prefix: str
    num_layers: int

    def block_name(self, i: int) -> str:
        """Return the dotted module name of block ``i``, e.g. ``"encoder.layer.3"``."""
        return f"{self.prefix}.{i}"


def _depth(name: str) -> int:
    """Return how many dots deep a dotted module name is."""
    return name.count(".")


def find_layer_stack(model: nn.Module) -> LayerStack:
    """Find the ``nn.ModuleList`` that holds the transformer blocks.

    Among all non-empty ``nn.ModuleList`` submodules whose last name component is
    one of ``STACK_NAMES``, pick the one with the most children; ties go to the
    shallowest name, then to the first one in module order.

    Args:
        model: The model to search, usually a bare Hugging Face base model.

    Returns:
        The stack's dotted prefix and its number of blocks.

    Raises:
        LayerStackError: If the model has no such ``nn.ModuleList``.
    """
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if name.rsplit(".", 1)[-1] not in STACK_NAMES:
            continue
        if best is None or (-len(module), _depth(name)) < (-best[1], _depth(best[0])):
            best = (name, len(module))
    if best is None:
        raise LayerStackError(
            f"Could not find the transformer blocks in {type(model).__name__}: no "
            f"non-empty nn.ModuleList named one of {', '.join(STACK_NAMES)} "
            "(e.g. 'encoder.layer' or 'model.layers'). Pass the transformer model "
            "itself (e.g. from transformers.AutoModel), not a wrapper that hides it."
        )
    return LayerStack(prefix=best[0], num_layers=best[1])


def top_k_layer_indices(num_layers: int, k: int) -> list[int]:
    """Return the indices of the last ``k`` of ``num_layers`` blocks, in order.

    Args:
        num_layers: Number of blocks in the stack.
        k: How many top blocks to take.

    Returns:
        ``[num_layers - k, ..., num_layers - 1]``.

    Raises:
        LayerStackError: If ``k`` is not in ``1..num_layers``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_layers:
        raise LayerStackError(
            f"top_k={k!r} but the model has {num_layers} layers; choose 1..{num_layers}"
        )
    return list(range(num_layers - k, num_layers))


def top_k_module_names(model: nn.Module, k: int) -> list[str]:
    """Return the dotted names of the top ``k`` blocks of ``model``.

    Args:
        model: The model whose block stack to use.
        k: How many top blocks to name.

    Returns:
        Block names, lowest first, e.g. ``["encoder.layer.4", "encoder.layer.5"]``.

    Raises:
        LayerStackError: If there is no stack or ``k`` does not fit it.
    """
    stack = find_layer_stack(model)
    return [stack.block_name(i) for i in top_k_layer_indices(stack.num_layers, k)]


def layer_index_of(name: str, stack: LayerStack) -> int | None:
    """Return the block index a dotted module name lives in.

    Args:
        name: A dotted module or parameter name, e.g.
            ``"encoder.layer.3.attention.self.query"``.
        stack: The block stack the name is relative to.

    Returns:
        The block index (``3`` above), or ``None`` for names outside the stack.
    """
    head = stack.prefix + "."
    if not name.startswith(head):
        return None
    part = name[len(head) :].split(".", 1)[0]
    if not part.isdigit():
        return None
    index = int(part)
    return index if index < stack.num_layers else None


def _matches(name: str, suffix: str) -> bool:
    """Return whether a dotted name ends with the dotted ``suffix``."""
    return name == suffix or name.endswith("." + suffix)


def _relative_name(name: str, stack: LayerStack) -> str:
    """Return ``name`` with its ``prefix.<index>.`` head removed."""
    return name[len(stack.prefix) + 1 :].split(".", 1)[-1]


def top_k_linear_names(
    model: nn.Module, k: int, suffixes: Sequence[str] | None = None
) -> list[str]:
    """Return the full names of every ``nn.Linear`` inside the top ``k`` blocks.

    bitsandbytes ``Linear8bitLt`` / ``Linear4bit`` subclass ``nn.Linear`` and are
    included.

    Args:
        model: The model to search.
        k: How many top blocks to search.
        suffixes: If given, keep only names equal to or ending with ``"." + s`` for
            some ``s`` in ``suffixes``, e.g. ``["query", "value"]`` or
            ``["self_attn.q_proj"]``.

    Returns:
        Dotted names in module order, e.g. ``["encoder.layer.5.attention.self.query"]``.

    Raises:
        LayerStackError: If there is no stack, ``k`` does not fit it, or a suffix
            matches no linear layer in the top ``k`` blocks.
    """
    stack = find_layer_stack(model)
    wanted = set(top_k_layer_indices(stack.num_layers, k))
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and layer_index_of(name, stack) in wanted
    ]
    if suffixes is None:
        return names
    if isinstance(suffixes, str):
        suffixes = [suffixes]
    missing = [s for s in suffixes if not any(_matches(n, s) for n in names)]
    if missing:
        available = list(dict.fromkeys(_relative_name(n, stack) for n in names))
        raise LayerStackError(
            f"Suffix(es) {missing} match no nn.Linear in the top {k} layers of "
            f"{type(model).__name__} (under '{stack.prefix}'). Available linear "
            f"suffixes: {available}"
        )
    return [n for n in names if any(_matches(n, s) for s in suffixes)]
