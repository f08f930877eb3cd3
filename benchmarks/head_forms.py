"""The three forms a LoRA head can take in the ``Embedder``: merged into a private copy of
its k blocks, unmerged as PEFT's LoRA layers around structural copies, and unmerged as
its factors alone on the base's own blocks (the compact head the ``Embedder`` builds).

Usage (offline, a few minutes; timings only meaningful as ratios within one run)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.head_forms \\
        --out benchmarks/results/head_forms.json

Per model and precision (``--dtypes``: ``auto``, bf16 where the CPU has it, and
``float32``), one Embedder builds the shipped medical adapter in each form: the build
time (median of ``--builds``, what a cold request waits for under a memory budget), the
bytes each form owns as the budget counts them, then ``--rounds`` interleaved rounds of
one ``encode`` of ``--texts`` abstracts per form and batch size (the order rotating each
round), every form's vectors against the merged ones (minimum cosine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import MEDICAL, MEDICAL_ADAPTERS, measure, tables
from benchmarks.bench.results import write_json

FORMS = ("merged", "peft-unmerged", "compact")
MODELS = MEDICAL_ADAPTERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.head_forms",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["auto", "float32"],
                        choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--builds", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--data", default=str(MEDICAL))
    parser.add_argument("--out", help="write the results as JSON here")
    return parser.parse_args(argv)


def build(embedder, folder: Path, meta, form: str):
    """One head of ``folder`` in ``form``, as the engine builds it."""
    engine = embedder.engine
    if form == "compact":
        return engine.compact_head(folder, meta)
    return engine.build_head(folder, meta, merge=form == "merged")


def bench(key: str, dtype: str, args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """Every form of one model's adapter in one precision: build, bytes, encode rounds."""
    import numpy as np

    from lastlayer import Embedder, artifact

    model, folder = MODELS[key]
    embedder = Embedder(model, dtype=dtype)
    meta = artifact.read(folder)
    builds: dict[str, list[float]] = {form: [] for form in FORMS}
    heads = {}
    for _ in range(args.builds):
        for form in FORMS:
            start = time.perf_counter()
            heads[form] = build(embedder, folder, meta, form)
            builds[form].append(time.perf_counter() - start)
    row: dict[str, Any] = {"model": key, "dtype": str(embedder.model.dtype),
                           "forms": {form: {"build_ms": statistics.median(builds[form]) * 1e3,
                                            "bytes": embedder.owned_bytes(heads[form])}
                                     for form in FORMS}}
    engine = embedder.engine
    for size in args.batch_sizes:
        batch = texts[:size]

        def encode(form: str, batch=batch, size=size) -> np.ndarray:
            return engine.embed(batch, [form] * len(batch), heads, batch_size=size).vectors

        seconds: dict[str, list[float]] = {form: [] for form in FORMS}
        vectors = {form: encode(form) for form in FORMS}  # warm-up: kernels, the heap
        for r in range(args.rounds):
            order = FORMS[r % len(FORMS):] + FORMS[: r % len(FORMS)]
            for form in order:
                start = time.perf_counter()
                vectors[form] = encode(form)
                seconds[form].append(time.perf_counter() - start)
        merged = statistics.median(seconds["merged"])
        row[f"encode_{size}"] = {
            form: {"median_ms": statistics.median(seconds[form]) * 1e3,
                   "vs_merged": statistics.median(seconds[form]) / merged,
                   "min_cos_to_merged": float((vectors[form] * vectors["merged"]).sum(1).min()),
                   "ms": [s * 1e3 for s in seconds[form]]}
            for form in FORMS}
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lastlayer.corpus import read_texts

    texts = read_texts(args.data, max_docs=max(args.texts, *args.batch_sizes))
    load = measure.load_1min()
    rows = [bench(key, dtype, args, texts) for key in args.models for dtype in args.dtypes]
    table = []
    for r in rows:
        for form in FORMS:
            f = r["forms"][form]
            cells = [r["model"], r["dtype"].removeprefix("torch."), form,
                     f"{f['bytes'] / 2**20:.2f}", f"{f['build_ms']:.1f}"]
            for size in args.batch_sizes:
                e = r[f"encode_{size}"][form]
                cells.append(f"{e['median_ms']:.0f} ({e['vs_merged']:.2f}×)")
            cos = min(r[f"encode_{s}"][form]["min_cos_to_merged"] for s in args.batch_sizes)
            cells.append(f"{cos:.7f}")
            table.append(cells)
    print(tables.markdown(["model", "dtype", "form", "MiB", "build ms",
                           *(f"encode {s} ms (× merged)" for s in args.batch_sizes),
                           "min cos to merged"], table))
    machine = measure.machine_description(load, measure.load_1min(),
                                          precision="/".join(r["dtype"] for r in rows))
    print(machine)
    if args.out:
        write_json(Path(args.out), {"machine": machine, "texts": args.texts,
                                    "rounds": args.rounds, "builds": args.builds,
                                    "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
