"""Run only the top-k blocks, from cached inputs of block L−k (the "split forward").

With a top-k adapter, everything below block L−k is frozen: for a given tokenized batch
its output never changes. So the input of block L−k can be computed once (by the base
model, e.g. while measuring the base) and the adapted model then only runs its top k
blocks. The split works on the model's own forward: the block list is swapped for its
top-k slice and the embedding module's output is replaced by the cached states, so masks,
rotary positions and final norms are built by the model exactly as usual. On valid
(non-padding) tokens the result equals the full forward (tested per architecture).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lastlayer.core.encoder import Encoder
from lastlayer.core.layers import LayerStack, find_layer_stack, top_k_layer_indices


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a ``PeftModel`` (adapter layers included), or ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def embedding_module(model: nn.Module) -> nn.Module:
    """The module whose output is the first block's input.

    BERT-family models have an ``embeddings`` module (token + position + norm); decoders
    feed the token embedding straight to the blocks (positions are rotary, inside them).
    """
    base = base_of(model)
    embeddings = getattr(base, "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else base.get_input_embeddings()


@contextmanager
def top_blocks_only(model: nn.Module, k: int, states: Tensor) -> Iterator[None]:
    """Within the block, ``model(**batch)`` runs only the top ``k`` blocks on ``states``.

    Args:
        model: A transformers model or a ``PeftModel`` around one.
        k: How many top blocks to run.
        states: ``(B, T, d)`` inputs of block ``L − k`` for exactly the batch that will be
            passed (same padding), e.g. from :func:`bottom_states`.
    """
    base = base_of(model)
    stack = find_layer_stack(base)
    parent_name, _, attr = stack.prefix.rpartition(".")
    parent = base.get_submodule(parent_name) if parent_name else base
    blocks = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList(list(blocks)[stack.num_layers - k :]))
    handle = embedding_module(base).register_forward_hook(lambda module, args, output: states)
    try:
        yield
    finally:
        handle.remove()
        setattr(parent, attr, blocks)


def bottom_index(model: nn.Module, k: int) -> int:
    """Index into ``hidden_states`` of block L−k's input (= output of block L−k−1).

    Raises:
        LayerStackError: ``k`` is not in 1..L (a negative index would pick a wrong layer).
    """
    stack: LayerStack = find_layer_stack(base_of(model))
    return top_k_layer_indices(stack.num_layers, k)[0]


def encode_with_cache(
    encoder: Encoder, texts: Sequence[str], k: int, batch_size: int = 32, desc: str = "embed"
) -> tuple[Tensor, list[Tensor]]:
    """Embed ``texts`` with the full model and keep block L−k's inputs, one tensor per batch.

    Returns:
        ``(embeddings (N, d), cache)``; pass both the texts and the cache, unchanged, to
        :func:`encode_from_cache`.
    """
    index = bottom_index(encoder.model, k)
    cache: list[Tensor] = []

    def embed(batch: dict[str, Tensor]) -> Tensor:
        out = encoder.model(**batch, output_hidden_states=True)
        cache.append(out.hidden_states[index])
        return encoder.pool(out.last_hidden_state, batch["attention_mask"])

    return encoder.encode(texts, batch_size, desc=desc, embed=embed), cache


def encode_from_cache(
    encoder: Encoder, texts: Sequence[str], cache: list[Tensor], k: int, batch_size: int = 32,
    desc: str = "embed (top-k from cache)",
) -> Tensor:
    """Embed ``texts`` running only the top ``k`` blocks of ``encoder.model`` on ``cache``.

    ``texts``, ``batch_size`` and the tokenizer settings must be those used to build the
    cache, so every batch has the same composition and padding.
    """
    batches = iter(cache)

    def embed(batch: dict[str, Tensor]) -> Tensor:
        with top_blocks_only(encoder.model, k, next(batches)):
            states = encoder.model(**batch).last_hidden_state
        return encoder.pool(states, batch["attention_mask"])

    with torch.inference_mode():
        return encoder.encode(texts, batch_size, desc=desc, embed=embed)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted states are captured."""


def bottom_states(model: nn.Module, batch: dict[str, Tensor], k: int) -> Tensor:
    """Inputs of block L−k for ``batch``: (B, T, d), computing nothing above them."""
    base = base_of(model)
    stack = find_layer_stack(base)
    block = base.get_submodule(stack.block_name(stack.num_layers - k))
    captured: list[Tensor] = []

    def capture(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _StopForward

    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(**batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]
