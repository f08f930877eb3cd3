"""What glibc's heap settings cost an ``Embedder``: its defaults against
``lastlayer.core.allocator.keep_freed_memory`` (freed blocks kept for the next forward).

Usage (offline, about two minutes; timings only meaningful as ratios within one run)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.allocator \\
        --out benchmarks/results/allocator.json

The setting is process-wide and one-way, so each runs in its own worker process: per
model and ``--batch-sizes`` entry, one worker with glibc's defaults and one with freed
memory kept, both loaded at once and asked in turn (``--pause`` seconds apart, the order
rotating), every round timing one ``encode`` of the same ``--texts`` medical abstracts
through the same adapter. A fresh pair per batch size, because glibc's default thresholds
follow the largest block freed so far: a process's history changes what it does next.
Each answer records the seconds, the minor page faults the call caused (``getrusage``:
fresh pages the kernel had to hand out and zero) and the process's peak RSS; the last
round's vectors are compared between the two settings (they must be identical: only
where memory comes from changes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import MEDICAL, MEDICAL_ADAPTERS, ROOT, measure, tables
from benchmarks.bench.results import write_json
from benchmarks.bench.workers import RESULT_MARK, worker_command, worker_env

SETTINGS = ("glibc-default", "kept")
MODELS = MEDICAL_ADAPTERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.allocator",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds between two calls (the other worker's threads and "
                             "freed pages settle; without it the second call pays for them)")
    parser.add_argument("--data", default=str(MEDICAL))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(spec: dict[str, Any]) -> None:
    """Load the Embedder under ``spec["setting"]``, then answer one request per line of
    stdin: a batch size (time one encode) or ``save PATH`` (write the last vectors)."""
    from lastlayer.core.allocator import keep_freed_memory

    applied = keep_freed_memory() if spec["setting"] == "kept" else False
    import numpy as np
    import torch

    from lastlayer import Embedder
    from lastlayer.corpus import read_texts

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    texts = read_texts(spec["data"], max_docs=spec["texts"])
    emb = Embedder(spec["model"])
    emb.load(spec["adapter"], name="domain")
    vectors = None
    for _ in range(2):  # warm-up: oneDNN's kernels for these shapes, the heap
        emb.encode(texts, adapter="domain", batch_size=spec["batch_size"])
    print(RESULT_MARK + json.dumps({"applied": applied, "dtype": str(emb.model.dtype)}),
          flush=True)
    for line in sys.stdin:
        request = line.strip()
        if request.startswith("save "):
            np.save(request[5:], vectors)
            print(RESULT_MARK + json.dumps({"saved": True}), flush=True)
            continue
        faults, start = measure.minor_faults(), time.perf_counter()
        vectors = emb.encode(texts, adapter="domain", batch_size=int(request)).vectors
        seconds = time.perf_counter() - start
        print(RESULT_MARK + json.dumps({
            "seconds": seconds, "faults": measure.minor_faults() - faults,
            "peak_rss_mb": measure.peak_rss_mb()}), flush=True)


class Worker:
    """One worker process, asked one line at a time."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(worker_command("allocator", spec), cwd=ROOT,
                                     env=worker_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.hello = self._answer()

    def ask(self, request: str) -> dict[str, Any]:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(RESULT_MARK):
                return json.loads(line[len(RESULT_MARK):])
        raise RuntimeError(f"worker exited with {self.proc.wait()}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def compare(args: argparse.Namespace, key: str, size: int) -> dict[str, Any]:
    """Both settings on one model and batch size: the rounds of each and their ratio."""
    import numpy as np

    model, adapter = MODELS[key]
    workers = {setting: Worker({"setting": setting, "model": model, "adapter": str(adapter),
                                "texts": args.texts, "batch_size": size, "data": args.data,
                                "threads": args.threads})
               for setting in SETTINGS}
    answers: dict[str, list[dict[str, Any]]] = {setting: [] for setting in SETTINGS}
    try:
        for r in range(args.rounds):
            for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
                time.sleep(args.pause)
                answers[setting].append(workers[setting].ask(str(size)))
        with tempfile.TemporaryDirectory() as tmp:
            paths = {s: str(Path(tmp) / f"{s}.npy") for s in SETTINGS}
            for setting, worker_ in workers.items():
                worker_.ask(f"save {paths[setting]}")
            identical = bool(np.array_equal(*(np.load(paths[s]) for s in SETTINGS)))
    finally:
        for worker_ in workers.values():
            worker_.close()
    row: dict[str, Any] = {"model": key, "batch_size": size, "texts": args.texts,
                           "dtype": workers["kept"].hello["dtype"],
                           "applied": workers["kept"].hello["applied"],
                           "vectors_identical": identical}
    for setting, got in answers.items():
        row[setting] = {"median_s": statistics.median(a["seconds"] for a in got),
                        "seconds": [a["seconds"] for a in got],
                        "faults_per_call": statistics.median(a["faults"] for a in got),
                        "peak_rss_mb": got[-1]["peak_rss_mb"]}
    ratios = [d["seconds"] / k["seconds"]
              for d, k in zip(answers["glibc-default"], answers["kept"], strict=True)]
    row["speedup_median"] = statistics.median(ratios)
    row["speedup_range"] = [min(ratios), max(ratios)]
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    load = measure.load_1min()
    rows = [compare(args, key, size) for key in args.models for size in args.batch_sizes]
    table = [[r["model"], str(r["batch_size"]),
              tables.fmt(r["glibc-default"]["median_s"] * 1e3, ".0f"),
              tables.fmt(r["kept"]["median_s"] * 1e3, ".0f"),
              f"{r['speedup_median']:.2f}× ({r['speedup_range'][0]:.2f}–"
              f"{r['speedup_range'][1]:.2f})",
              tables.fmt(r["glibc-default"]["faults_per_call"], ",.0f"),
              tables.fmt(r["kept"]["faults_per_call"], ",.0f"),
              f"{r['glibc-default']['peak_rss_mb']:.0f} / {r['kept']['peak_rss_mb']:.0f}"]
             for r in rows]
    print(tables.markdown(["model", "batch size", "defaults ms", "kept ms",
                           "speed-up (rounds)", "faults / call, defaults", "kept",
                           "peak RSS MB"], table))
    for r in rows:
        print(f"{r['model']} at {r['batch_size']} ({r['dtype']}): vectors identical: "
              f"{r['vectors_identical']}, settings applied: {r['applied']}")
    machine = measure.machine_description(load, measure.load_1min(),
                                          precision=rows[0]["dtype"])
    print(machine)
    if args.out:
        write_json(Path(args.out), {"machine": machine, "texts": args.texts,
                                    "rounds": args.rounds, "pause_s": args.pause,
                                    "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
