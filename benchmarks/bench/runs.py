"""Resumable plans of training runs: keys, groups on one base, pair caches, the loop.

A plan is a list of runs, most wanted first. Each run has a ``key`` (its fields as sorted
JSON) and, once finished, one row in a JSON-lines file; running the plan again skips every
key already there (:func:`execute`), so an interrupted plan loses at most the run in
progress. Consecutive runs on the same base and data set form a :class:`Group`: the base
is loaded once, its embeddings of the held-out texts (and their block L-k inputs) are
computed once and kept on disk, and so are the cached training pairs of each seed; every
run then trains a fresh copy of the base.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from benchmarks.bench import DATA_ROOT
from benchmarks.bench.measure import commit, cpu_seconds, machine
from benchmarks.bench.models import SharedBase
from benchmarks.bench.protocol import EVAL_SEED, EvalData
from benchmarks.bench.results import append_row, read_rows
from lastlayer.config import ModelConfig, Recipe
from lastlayer.core.heads import embed_from_inputs, embed_keeping_inputs, model_head
from lastlayer.evaluation.metrics import paired_delta
from lastlayer.training.cache import CachedViews
from lastlayer.training.pairs import CachedPairStream, cached_pair_stream
from lastlayer.training.run import fit, prepare
from lastlayer.training.views import ViewStats

T = TypeVar("T")
G = TypeVar("G")


class Keyed:
    """A run (a frozen dataclass) whose ``key`` identifies it in a results file."""

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def pending(items: Sequence[T], done: set[str], key: Callable[[T], str],
            group: Callable[[T], Hashable]) -> Iterator[tuple[Hashable, list[T]]]:
    """The items whose ``key`` is not in ``done``, grouped by consecutive ``group``."""
    todo = [item for item in items if key(item) not in done]
    yield from ((g, list(members)) for g, members in groupby(todo, group))


def execute(items: Sequence[T], out: Path, *, key: Callable[[T], str],
            group: Callable[[T], Hashable], open_group: Callable[[Hashable], G],
            train: Callable[[G, T], dict[str, Any]], say: Callable[[int, T, dict], str],
            max_minutes: float | None = None) -> int:
    """Run the items not yet in ``out``, appending a row per run; return how many ran.

    Args:
        key: an item's key in the results file.
        group: what consecutive items share (one base on one data set).
        open_group: opens a group, once for its consecutive items, when the first of them
            is about to run.
        train: runs one item in its opened group and returns its row.
        say: the line printed after each run (given the count so far, the item, its row).
        max_minutes: start no run (and open no group) after this long.
    """
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else None
    count = 0
    for name, members in pending(items, {r["key"] for r in read_rows(out)}, key, group):
        opened = None
        for item in members:
            if deadline and time.monotonic() > deadline:
                print(f"Stopped at the {max_minutes}-minute limit; run again to continue.")
                return count
            opened = opened if opened is not None else open_group(name)
            row = train(opened, item)
            append_row(out, row)
            count += 1
            print(say(count, item, row), flush=True)
    return count


def add_run_arguments(parser: argparse.ArgumentParser, out: Path, work: Path) -> None:
    """``--out``, ``--work`` and ``--data-root``: the options every resumable benchmark run
    over these data sets takes (findings, budget)."""
    parser.add_argument("--out", type=Path, default=out, help="results (JSON lines)")
    parser.add_argument("--work", type=Path, default=work,
                        help="where base embeddings and pair caches are kept between runs")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT,
                        help="folder holding the data sets (default ../shared/data, or "
                             "$LASTLAYER_DATA)")


# ---------------------------------------------------------------------------------------
# Pair caches on disk.


def save_views(path: Path, stream: CachedPairStream) -> None:
    """Keep a cached pair stream's views (block inputs of both sides) in one file."""
    def parts(views: CachedViews) -> tuple[torch.Tensor, ...]:
        return views.ids, views.states, views.offsets

    same = stream.views_b is stream.views_a
    torch.save({"a": parts(stream.views_a), "b": None if same else parts(stream.views_b),
                "stats": asdict(stream.stats), "k": stream.k}, path)


def first_pairs(views: CachedViews, n: int) -> CachedViews:
    """The first ``n`` cached views (what a smaller ``train.cached_pairs`` would cache)."""
    end = int(views.offsets[n])
    return CachedViews(views.ids[:end], views.states[:end], views.offsets[: n + 1])


def load_views(path: Path, total: int, seed: int, first: int | None = None) -> CachedPairStream:
    """The pair stream of a saved cache: ``total`` pairs in seeded epochs over its pairs (its
    ``first`` pairs only, when given). Memory-mapped: pages come in as batches need them."""
    saved = torch.load(path, mmap=True)
    a = CachedViews(*saved["a"])
    b = a if saved["b"] is None else CachedViews(*saved["b"])
    if first is not None:
        same = b is a
        a = first_pairs(a, first)
        b = a if same else first_pairs(b, first)
    return CachedPairStream(a, b, total, seed, ViewStats(**saved["stats"]), saved["k"])


# ---------------------------------------------------------------------------------------
# A group of runs on one base and one data set.


@dataclass
class Trained:
    """What one run of a group gave: the fit, its score, and what it cost."""

    result: Any  # lastlayer.training.run.TrainResult
    value: float
    correct: list[bool] | None
    train_s: float
    train_cpu_s: float
    eval_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


class Group:
    """One base on one data set: the base measured once, caches built once, then runs.

    Args:
        work: where the base's scores and the pair caches are kept between calls.
        dataset: the data set's name (progress messages).
        data: its held-out texts and training documents.
        model: the base.
        k: the depth of the caches: the held-out texts' and the pairs' block L-k inputs.
    """

    def __init__(self, work: Path, dataset: str, data: EvalData, model: ModelConfig,
                 k: int) -> None:
        self.work, self.dataset, self.data, self.k = work, dataset, data, k
        self.work.mkdir(parents=True, exist_ok=True)
        self.shared = SharedBase(model)
        self.base, self.base_correct, self.eval_cache = self._base()

    @property
    def base_model(self) -> Any:
        """The base's own model (never trained)."""
        return self.shared.model

    def _base(self) -> tuple[float, list[bool] | None, list[torch.Tensor]]:
        path = self.work / "base.pt"
        if path.exists():
            saved = torch.load(path, mmap=True)
            return saved["value"], saved["correct"], saved["cache"]
        base = self.shared.encoder
        vectors, cache = embed_keeping_inputs(base, self.data.texts, model_head(base, self.k),
                                              32, f"embed {self.dataset} (base)")
        value, correct = self.data.score(vectors)
        torch.save({"value": value, "correct": correct, "cache": cache}, path)
        return value, correct, cache

    def cache_pairs(self, path: Path, recipe: Recipe, total: int, batch_size: int
                    ) -> float | None:
        """Cache ``total`` pairs of ``recipe`` (block L-k inputs, by the base) to ``path``
        unless it exists; the seconds it took (building and saving), or None."""
        if path.exists():
            return None
        start = time.perf_counter()
        stream = cached_pair_stream(self.shared.encoder, self.data.train_docs, recipe, total,
                                    batch_size, k=self.k)
        save_views(path, stream)
        return time.perf_counter() - start

    def train(self, recipe: Recipe, pairs: CachedPairStream | None, from_cache: bool = True,
              keep: Callable[[Any, Any, float, list[bool] | None], None] | None = None
              ) -> Trained:
        """Train ``recipe`` on a fresh copy of the base (on ``pairs``, or fresh views when
        None) and score it on the held-out texts.

        Args:
            from_cache: embed the held-out texts from their cached block L-k inputs (the
                adapter's k must be at most the group's).
            keep: called with (the trained encoder, the fit, value, correct) before the base
                is put back, to save the artifact.
        """
        with self.shared.trainable() as encoder:
            # lastlayer's own steps on the shared base: the adapter with its objective's
            # model switches, then the loop; the base was measured once for the group.
            job = prepare(recipe, encoder=encoder, documents=self.data.train_docs,
                          evaluate=False)
            job.pairs = pairs
            load_before, cpu_before = os.getloadavg(), cpu_seconds()
            start = time.perf_counter()
            result = fit(job)
            train_s = time.perf_counter() - start
            train_cpu_s = cpu_seconds() - cpu_before
            load_after = os.getloadavg()
            if from_cache:
                # the trained model's top k blocks (the adapter's and any base ones below)
                vectors = embed_from_inputs(encoder, self.data.texts, self.eval_cache,
                                            model_head(encoder, self.k), 32,
                                            "embed (adapted, from cache)")
            else:
                vectors = encoder.encode(self.data.texts, 32, desc="embed (adapted)")
            value, correct = self.data.score(vectors)
            eval_s = time.perf_counter() - start - train_s
            if keep is not None:
                keep(encoder, result, value, correct)
        return Trained(result, value, correct, train_s, train_cpu_s, eval_s, load_before,
                       load_after)


# ---------------------------------------------------------------------------------------
# The fields every training row shares.


def scores(group: Group, trained: Trained) -> dict[str, Any]:
    """A run's metric, value, the base's value and the delta (with its paired-bootstrap
    95% CI over the held-out documents when they are labelled)."""
    row = {"metric": group.data.metric, "value": trained.value, "base_value": group.base,
           "delta": trained.value - group.base}
    if trained.correct is not None:
        ci = paired_delta(np.asarray(group.base_correct), np.asarray(trained.correct),
                          seed=EVAL_SEED)
        row.update(ci95_low=ci["ci95_low"], ci95_high=ci["ci95_high"])
    return row


def provenance() -> dict[str, str]:
    """The machine, the commit and the time (UTC) a row was finished on."""
    return {"machine": machine(torch.__version__), "commit": commit(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
