"""Positive pairs for training: documents in seeded epochs -> two views -> model inputs.

Two sources of batches share one shape (``{"a": inputs, "b": inputs}``):

- fresh views (``PairStream`` + ``PairCollator``): new random views of every document each
  time it comes round, tokenized per batch;
- cached views (``CachedPairStream`` + ``CachedPairCollator``, ``train.cached_pairs``): a
  fixed set of pairs whose bottom-layer states were computed once; batches carry those
  states and only the top-k blocks run (``lastlayer.training.cache``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from lastlayer.config import ConfigError, ObjectiveConfig, Recipe
from lastlayer.core.encoder import Encoder
from lastlayer.training.cache import CachedViews, cache_views, embed_top_k, pad_cached
from lastlayer.training.objectives import objective_for
from lastlayer.training.views import ViewStats

log = logging.getLogger(__name__)


class DocumentStream(Dataset):
    """Exactly ``total`` documents: back-to-back seeded permutations of the corpus (epochs)."""

    def __init__(self, docs: list[str], total: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        order: list[int] = []
        while len(order) < total:
            order.extend(rng.permutation(len(docs)).tolist())
        self.docs, self.order = docs, order[:total]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> str:
        return self.docs[self.order[i]]


class PairStream(Dataset):
    """Positive pairs: item ``i`` is two views of the ``i``-th document of a ``DocumentStream``.

    Each item draws its views from its own ``random.Random(seed, i)``, so a pair depends only
    on the seed and its position: runs are reproducible, resumed runs see exactly the views
    they would have seen, and no process or prefetching order can change them.
    """

    def __init__(self, docs: DocumentStream, objective: ObjectiveConfig, seed: int) -> None:
        self.docs, self.objective, self.seed = docs, objective, seed
        self.make = objective_for(objective).view_maker
        self.kwargs = objective_for(objective).view_kwargs(objective)
        self.stats = ViewStats()

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> tuple[str, str]:
        rng = random.Random(f"{self.seed}:{i}")
        return self.make(self.docs[i], rng, stats=self.stats, **self.kwargs)


@dataclass
class PairCollator:
    """Tokenizes a batch of pairs into the two views' model inputs."""

    encoder: Encoder

    def __call__(self, pairs: list[tuple[str, str]]) -> dict[str, dict[str, torch.Tensor]]:
        a, b = zip(*pairs, strict=True)
        return {"a": self.encoder.tokenize(a), "b": self.encoder.tokenize(b)}


class CachedPairStream(Dataset):
    """Pre-sampled pairs with cached bottom states, visited in seeded epochs.

    Item ``i`` is the index of a cached pair (the collator fetches and pads it), so the
    DataLoader, resuming and sharding across processes work as for fresh views. ``k``: the
    states are inputs of block L−k, so every step runs the top ``k`` blocks.
    """

    def __init__(self, views_a: CachedViews, views_b: CachedViews, total: int, seed: int,
                 stats: ViewStats, k: int) -> None:
        self.views_a, self.views_b, self.stats, self.k = views_a, views_b, stats, k
        self.order = DocumentStream(list(range(len(views_a))), total, seed)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> int:
        return self.order[i]

    def nbytes(self) -> int:
        """Bytes of cached states (one set when both views are the same text)."""
        views = {id(v): v for v in (self.views_a, self.views_b)}
        return sum(v.nbytes() for v in views.values())


@dataclass
class CachedPairCollator:
    """Re-pads a batch of cached pairs into the two views' inputs and states."""

    pairs: CachedPairStream
    pad_id: int

    def __call__(self, rows: list[int]) -> dict[str, dict[str, torch.Tensor]]:
        return {"a": pad_cached(self.pairs.views_a, rows, self.pad_id),
                "b": pad_cached(self.pairs.views_b, rows, self.pad_id)}


def cached_pair_stream(
    encoder: Encoder, docs: list[str], recipe: Recipe, total: int, per_step: int,
    k: int | None = None,
) -> CachedPairStream:
    """Sample ``train.cached_pairs`` pairs once and cache their block-(L−k) input states.

    Exact for the crop and span objectives up to the choice of pairs (epochs over a fixed
    set instead of fresh crops every step) and dropout: the bottom layers run once, in eval
    mode, so dropout only acts in the top-k blocks (this weakens the dropout objective).
    When the objective's two views are the same text (``same_text``: dropout), they are
    cached once.

    Args:
        k: Cache the inputs of block L−k (default: the adapter's ``top_k``). A larger ``k``
            lets one cache serve adapters on any top-k' ≤ k (sweeps over k, lr or kind):
            the blocks between are frozen and run each step, so the result is the same.
    """
    cfg = recipe.train
    if cfg.cached_pairs < per_step:
        raise ConfigError(
            f"train.cached_pairs={cfg.cached_pairs} is smaller than one global batch "
            f"({per_step} pairs); raise it or set it to 0 for fresh views every step."
        )
    k = k or recipe.adapter.top_k
    fresh = PairStream(DocumentStream(docs, cfg.cached_pairs, recipe.seed), recipe.objective,
                       recipe.seed)
    pairs = [fresh[i] for i in range(len(fresh))]
    dtype = getattr(torch, cfg.cache_dtype)
    sides = (0,) if objective_for(recipe.objective).same_text else (0, 1)
    views = [cache_views(encoder, [pair[side] for pair in pairs], k, cfg.batch_size, dtype,
                         desc=f"cache view {side + 1} (bottom layers)", folder=cfg.cache_dir)
             for side in sides]
    stream = CachedPairStream(views[0], views[-1], total, recipe.seed, fresh.stats, k)
    log.info("Cached %d pairs (%.0f MB); %.1f epochs over them.", len(pairs),
             stream.nbytes() / 2**20, total / len(pairs))
    return stream


def length_grouped_sampler(pairs: CachedPairStream, batch_size: int, seed: int):
    """Batches of cached pairs of similar token length, to run less padding.

    transformers' ``LengthGroupedSampler``: a seeded permutation cut into mega-batches of 50
    batches, each sorted by length (here: both views' tokens). In-batch negatives then have
    similar lengths, which removes length as a shortcut but changes the batches: its effect
    on quality is measured in ``benchmarks/speed.py`` (mode ``lora-top2-cached-grouped``).
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    a, b = pairs.views_a.lengths(), pairs.views_b.lengths()
    lengths = [a[pairs[i]] + b[pairs[i]] for i in range(len(pairs))]
    return LengthGroupedSampler(batch_size, lengths=lengths,
                                generator=torch.Generator().manual_seed(seed))


def embed_view(encoder: Encoder, model, inputs: dict[str, torch.Tensor]):
    """Embed one view: a normal forward, or, when states are cached, a forward of ``model``
    as the :class:`~lastlayer.core.split.TopKHead` over the blocks above them."""
    if "states" in inputs:
        return embed_top_k(encoder, model, inputs)
    return encoder.embed(inputs, model)
