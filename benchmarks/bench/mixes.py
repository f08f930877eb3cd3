"""Mixed batches as Punica measures them, each against a single-adapter batch of the same texts.

The mixes (Punica, Chen et al. 2023) say how a batch's rows spread over adapters:

- ``identical``: every row one adapter (the control: it *is* the single-adapter batch);
- ``uniform``: rows spread evenly over 4 adapters, round-robin;
- ``skewed``: Zipf-like, adapter ``i`` (rank 1 …) gets rows in proportion to ``i^−1.5``,
  rows shuffled with a fixed seed;
- ``distinct``: every row its own adapter, up to 16 (then round-robin over the 16);
- ``distinct-per-head`` (reference): ``distinct`` with the engine's grouped pass off
  (``Engine.grouped = False``: one head per adapter), what the engine did before it.

Each round times the single-adapter call and every mix, interleaved (the order rotating),
and a row's ratio is the median over rounds of ``single seconds / mix seconds`` of that
round: a pair measured seconds apart, so a busy neighbour moves both. Each row carries
its roofline (:mod:`benchmarks.bench.roofline`): the same FLOPs as the single batch,
since every row still runs L blocks once.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.bench.roofline import measured_peak, roofline

MIXES = ("identical", "uniform", "skewed", "distinct", "distinct-per-head")
UNIFORM_ADAPTERS = 4
ZIPF = 1.5


def assign(mix: str, count: int, names: Sequence[str], seed: int = 0) -> list[str]:
    """The adapter of each of ``count`` rows under ``mix`` (see the module docstring)."""
    if mix == "identical":
        return [names[0]] * count
    if mix == "uniform":
        return [names[i % min(UNIFORM_ADAPTERS, len(names))] for i in range(count)]
    if mix in ("distinct", "distinct-per-head"):
        return [names[i % len(names)] for i in range(count)]
    if mix == "skewed":
        weights = [(i + 1) ** -ZIPF for i in range(len(names))]
        shares = [count * w / sum(weights) for w in weights]
        rows = [int(s) for s in shares]
        by_remainder = sorted(range(len(names)), key=lambda i: rows[i] - shares[i])
        for i in by_remainder[: count - sum(rows)]:
            rows[i] += 1
        keys = [name for name, n in zip(names, rows, strict=True) for _ in range(n)]
        random.Random(seed).shuffle(keys)
        return keys
    raise ValueError(f"mix must be one of {', '.join(MIXES)}, not {mix!r}")


def bench_mixes(embedder, names: Sequence[str], texts: Sequence[str], sizes: Sequence[int],
                repeats: int, batch_size: int, threads: int, log: Callable[[str], None] = print
                ) -> list[dict[str, Any]]:
    """Every mix at every size of ``texts[:size]``, over ``names`` (the first is the single
    adapter), as rows: seconds, the paired ratio to single, the roofline."""
    precision = {"float32": "fp32", "bfloat16": "bf16"}.get(
        str(next(embedder.model.parameters()).dtype).removeprefix("torch."), "fp32")
    peak = measured_peak(precision, threads)
    config = embedder.model.config
    rows = []
    for size in sizes:
        chunk = list(texts[:size])
        calls = {"single": (names[0], True)}
        calls.update({mix: (assign(mix, size, names), mix != "distinct-per-head")
                      for mix in MIXES})

        def run(name: str, chunk=chunk, calls=calls):
            adapter, grouped = calls[name]
            embedder.engine.grouped = grouped
            try:
                return embedder.encode(chunk, adapter=adapter, batch_size=batch_size,
                                       progress=False)
            finally:
                embedder.engine.grouped = True

        tokens = run("single").tokens.tolist()  # warm-up, and the tokens counted
        for name in MIXES:
            run(name)
        times: dict[str, list[float]] = {name: [] for name in calls}
        order = list(calls)
        for r in range(repeats):
            for name in order[r % len(order):] + order[: r % len(order)]:
                start = time.perf_counter()
                run(name)
                times[name].append(time.perf_counter() - start)
        for mix in MIXES:
            pairs = [s / m for s, m in zip(times["single"], times[mix], strict=True)]
            seconds = statistics.median(times[mix])
            rows.append({
                "texts": size, "mix": mix, "adapters": len(set(calls[mix][0])),
                "seconds": seconds, "single_seconds": statistics.median(times["single"]),
                "ratio": statistics.median(pairs), "ratios_each": pairs,
                "roofline": roofline(config, tokens, seconds, precision, cores=threads,
                                     measured=peak)})
            log(f"  {size} texts, {mix}: {rows[-1]['ratio']:.3f}× single")
    return rows


def table_rows(model: str, rows: list[dict[str, Any]]) -> list[list[str]]:
    """Markdown cells of the mixed-batch table for one model."""
    out = []
    for row in rows:
        roof = row["roofline"]
        out.append([model, str(row["texts"]), row["mix"], str(row["adapters"]),
                    f"{row['single_seconds']:.3f}", f"{row['seconds']:.3f}",
                    f"{row['ratio']:.3f}×", f"{roof['gflops']:.1f}",
                    f"{100 * roof['fraction_of_peak']:.1f} %",
                    f"{100 * roof.get('fraction_of_measured', float('nan')):.1f} %"])
    return out


HEADER = ["model", "texts", "mix", "adapters", "single s", "mix s", "ratio", "GFLOP/s",
          "of peak", "of matmul peak"]
