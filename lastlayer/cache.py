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

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lastlayer.layers import LayerStack, find_layer_stack
from lastlayer.model import Encoder


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
    """Index into ``hidden_states`` of block L−k's input (= output of block L−k−1)."""
    stack: LayerStack = find_layer_stack(base_of(model))
    return stack.num_layers - k


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


# ---------------------------------------------------------------------------------------
# Training from cached bottom states: pre-sampled pairs, several epochs, top-k blocks only.


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


class CachedViews:
    """Token ids and block-(L−k) input states of many texts, stored unpadded.

    All states sit in one flat ``(tokens, d)`` tensor (text ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``), in RAM or in a memory-mapped file, so a cache larger
    than RAM is paged in from disk as batches need it.
    """

    def __init__(self, ids: Tensor, states: Tensor, offsets: Tensor) -> None:
        self.ids, self.states, self.offsets = ids, states, offsets

    @classmethod
    def allocate(cls, lengths: Sequence[int], d: int, dtype: torch.dtype,
                 folder: str | Path | None = None) -> CachedViews:
        """Empty storage for texts of these token lengths; in a file under ``folder`` if given.

        The file is unlinked as soon as it is mapped: the mapping lives as long as the
        tensor, and nothing is left on disk when the process ends, however it ends.
        """
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor(list(lengths), dtype=torch.long).cumsum(0)
        tokens = int(offsets[-1])
        ids = torch.zeros(tokens, dtype=torch.long)
        if folder is None:
            return cls(ids, torch.empty((tokens, d), dtype=dtype), offsets)
        Path(folder).mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(suffix=".states", dir=folder)
        os.close(handle)
        try:
            flat = torch.from_file(name, shared=True, size=tokens * d, dtype=dtype)
        finally:
            os.unlink(name)
        return cls(ids, flat.view(tokens, d), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        """Text ``i``'s token ids ``(n,)`` and states ``(n, d)``."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[start:end], self.states[start:end]

    def put(self, i: int, ids: Tensor, states: Tensor) -> None:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        self.ids[start:end] = ids
        self.states[start:end] = states

    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()


def cache_views(
    encoder: Encoder, texts: Sequence[str], k: int, batch_size: int = 32,
    dtype: torch.dtype = torch.float32, desc: str = "cache bottom layers",
    folder: str | Path | None = None,
) -> CachedViews:
    """Tokenize ``texts`` and store each one's block-(L−k) input states without padding.

    Valid-token states below the top k blocks do not depend on the padding around them,
    so re-padding them later and running the top k blocks gives the full forward's result.

    Args:
        dtype: Storage type of the states (``bfloat16`` halves the memory; the top blocks
            then start from rounded inputs).
        folder: Memory-map the states to a file in this folder instead of holding them in
            RAM (for corpora whose cache is larger than RAM).
    """
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    batches = [encoder.tokenize([texts[i] for i in rows]) for rows in chunks]
    lengths = [0] * len(texts)
    for rows, batch in zip(chunks, batches, strict=True):
        for j, n in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
            lengths[rows[j]] = n  # right padding: the valid tokens come first
    views: CachedViews | None = None
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        with torch.inference_mode():
            for rows, batch in tqdm(list(zip(chunks, batches, strict=True)), desc=desc,
                                    unit="batch"):
                hidden = bottom_states(encoder.model, batch, k).to("cpu", dtype)
                if views is None:
                    views = CachedViews.allocate(lengths, hidden.shape[-1], dtype, folder)
                for j, i in enumerate(rows):
                    n = lengths[i]
                    views.put(i, batch["input_ids"][j, :n].cpu(), hidden[j, :n])
    finally:
        encoder.model.train(was_training)
    return views if views is not None else CachedViews.allocate([], 1, dtype)


def pad_cached(views: CachedViews, rows: Sequence[int], pad_id: int) -> dict[str, Tensor]:
    """Re-pad cached views into a batch: input ids, attention mask and states (B, T, d)."""
    length = max(views.length(i) for i in rows)
    d = views.states.shape[-1]
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    states = torch.zeros((len(rows), length, d), dtype=torch.float32)
    for j, i in enumerate(rows):
        view_ids, view_states = views[i]
        n = len(view_ids)
        ids[j, :n], mask[j, :n], states[j, :n] = view_ids, 1, view_states.float()
    return {"input_ids": ids, "attention_mask": mask, "states": states}


def embed_top_k(encoder: Encoder, model: nn.Module, batch: dict[str, Tensor], k: int) -> Tensor:
    """Embed a re-padded cached batch running only the top ``k`` blocks (with gradients)."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
    with top_blocks_only(_unwrap(model), k, batch["states"]):
        return encoder.embed(inputs, model)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (same modules, same parameters)."""
    return getattr(model, "module", model)
