"""Cached bottom-layer states of training views: computed once, stored unpadded.

Training from cached pairs runs only the top-k blocks each step (``train.cached_pairs``):
a :class:`~lastlayer.core.split.BottomRunner` computes the states once, a
:class:`~lastlayer.core.split.TopKHead` runs the top blocks on them with gradients.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from lastlayer.core.encoder import Encoder, longest_first_batches
from lastlayer.core.progress import progress
from lastlayer.core.split import BottomRunner

# ---------------------------------------------------------------------------------------
# Training from cached bottom states: pre-sampled pairs, several epochs, top-k blocks only.


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
    chunks = longest_first_batches(texts, batch_size)
    batches = [encoder.tokenize([texts[i] for i in rows]) for rows in chunks]
    lengths = [0] * len(texts)
    for rows, batch in zip(chunks, batches, strict=True):
        for j, n in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
            lengths[rows[j]] = n  # right padding: the valid tokens come first
    views: CachedViews | None = None
    was_training = encoder.model.training
    encoder.model.eval()
    bottom = BottomRunner(encoder.model, k)  # in eval mode, as the model now is
    try:
        with torch.inference_mode():
            for rows, batch in progress(list(zip(chunks, batches, strict=True)), desc=desc,
                                        unit="batch", enabled=True):
                hidden = bottom(batch).to("cpu", dtype)
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


def embed_top_k(encoder: Encoder, head: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Embed a re-padded cached batch with a top-k head (with gradients): (B, d).

    Args:
        head: A :class:`~lastlayer.core.split.TopKHead` over the model's top blocks, or
            the same head prepared by Accelerate (DDP-wrapped with several processes).
    """
    mask = batch["attention_mask"]
    return encoder.pool(head(batch["states"], mask), mask)
