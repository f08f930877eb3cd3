"""Inference precision on CPU: texts/s and quality of each way torch offers, against fp32.

Modes, all on all-MiniLM-L6-v2 (the packaged copy) with the shipped medical adapter:

| mode | what runs |
|---|---|
| ``fp32`` | float32 weights (the baseline) |
| ``bf16`` | bfloat16 weights (what ``dtype: auto`` picks on a CPU with AMX / AVX512-BF16) |
| ``autocast`` | float32 weights under ``torch.autocast("cpu", torch.bfloat16)`` |
| ``mkldnn-bf16`` | float32 weights, ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` |
| ``int8`` | float32, the shared trunk in dynamic int8 linear layers (``quantize="int8"``) |
| ``bf16+int8`` | bfloat16 weights, the trunk in int8 |

Speed: texts/s of ``Embedder.encode(texts, adapter="medical")`` on medical abstracts, the
modes interleaved (A B C … A B C) so that a drifting load hits all alike; medians.
Quality, per data set (the four labelled sets and SciFact under ``--data-root``): the
smallest cosine of a text's vector to its fp32 vector (target >= 0.999), and kNN accuracy
(leave-one-out, k=10) or nDCG@10 against fp32's, with the paired bootstrap 95% interval
of the difference (labelled sets; "within" when it holds 0). The medical set is embedded
with the medical adapter, the others with the base.

``--compile`` adds torch.compile (Inductor) two ways, fp32 and bf16, each against eager in
interleaved rounds: the whole model with length buckets (every batch padded to 32, 64 or
128 tokens, so each bucket compiles once: compile seconds per bucket, steady texts/s), and
the way the ``Embedder`` could use it: each block of its base compiled with dynamic shapes
(batches of any size and length, no padding; the engine runs blocks, not the whole model),
``encode`` of the same texts against a second, eager ``Embedder`` (first-call seconds,
texts/s, smallest cosine to eager).

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.precision --quick           # ~3 min
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.precision --compile \\
        --data-root DATA                      # the full run, ~15 min on 2 cores

Results: ``benchmarks/results/precision.json`` (``--out``), a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench import DATA_ROOT, protocol
from benchmarks.bench.measure import cpu_description, load_1min
from benchmarks.bench.results import write_json

ROOT = Path(__file__).resolve().parents[1]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTER = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
MODES: dict[str, dict[str, Any]] = {
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "autocast": {"dtype": "float32", "autocast": True},
    "mkldnn-bf16": {"dtype": "float32", "mkldnn": True},
    "int8": {"dtype": "float32", "quantize": "int8"},
    "bf16+int8": {"dtype": "bfloat16", "quantize": "int8"},
}
QUICK_MODES = ("fp32", "bf16", "autocast", "int8")
BUCKETS = (32, 64, 128)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 modes, 2 data sets of 300 "
                        "documents, 3 rounds")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=None)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--datasets", nargs="+", choices=list(protocol.DATASETS), default=None)
    parser.add_argument("--docs", type=int, default=None, help="documents per data set "
                        f"(default {protocol.EVAL_DOCS}; --quick 300)")
    parser.add_argument("--texts", type=int, default=64, help="texts per timed call")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds "
                        "(default 7; --quick 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "precision.json")
    args = parser.parse_args(argv)
    quick = args.quick
    args.modes = args.modes or list(QUICK_MODES if quick else MODES)
    args.datasets = args.datasets or (["medical_abstracts", "scifact"] if quick
                                      else list(protocol.DATASETS))
    args.docs = args.docs or (300 if quick else protocol.EVAL_DOCS)
    args.rounds = args.rounds or (3 if quick else 7)
    return args


@contextlib.contextmanager
def mode_context(spec: dict[str, Any]) -> Iterator[None]:
    """The process-wide torch switch a mode needs, on for one call only."""
    if spec.get("autocast"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    elif spec.get("mkldnn"):
        before = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            yield
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = before
    else:
        yield


def embedders(modes: list[str]) -> dict[str, Any]:
    """One Embedder per mode with the medical adapter loaded as ``medical``."""
    from lastlayer.inference import Embedder

    out = {}
    for mode in modes:
        spec = MODES[mode]
        emb = Embedder(MODEL, device="cpu", dtype=spec["dtype"], quantize=spec.get("quantize"))
        emb.load(ADAPTER, name="medical")
        out[mode] = emb
    return out


def encode(emb, spec: dict[str, Any], texts: list[str], adapter: str | None) -> np.ndarray:
    with mode_context(spec):
        return emb.encode(texts, adapter=adapter, batch_size=32, progress=False).vectors


def speed(embs: dict[str, Any], texts: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """Median texts/s per mode over interleaved rounds (one warm-up call each first)."""
    seconds: dict[str, list[float]] = {mode: [] for mode in embs}
    for mode, emb in embs.items():
        encode(emb, MODES[mode], texts[:8], "medical")
    for _ in range(rounds):
        for mode, emb in embs.items():
            start = time.perf_counter()
            encode(emb, MODES[mode], texts, "medical")
            seconds[mode].append(time.perf_counter() - start)
    base = statistics.median(seconds["fp32"]) if "fp32" in seconds else None
    return {mode: {"texts_per_s": len(texts) / statistics.median(s),
                   "vs_fp32": (base / statistics.median(s)) if base else None}
            for mode, s in seconds.items()}


def eval_set(dataset: str, data_root: Path, docs: int) -> protocol.EvalData:
    """The held-out texts of a data set, ``docs`` of them (as the findings sample them)."""
    from lastlayer.evaluation.suite import retrieval_task

    path = data_root / protocol.DATASETS[dataset]
    if path.is_dir():  # BEIR: a corpus sample and the test queries
        task = retrieval_task(path, "test", max_docs=docs, seed=protocol.EVAL_SEED)
        return protocol.EvalData(task.docs + task.queries, task=task)
    held, _ = protocol.held_out_split(str(path), docs, protocol.EVAL_SEED)
    return protocol.EvalData(held.texts, labels=held.labels)


def quality(embs: dict[str, Any], dataset: str, data_root: Path, docs: int
            ) -> dict[str, dict[str, Any]]:
    """Per mode: min cosine to fp32 per text, the metric, its difference to fp32 and CI."""
    from lastlayer.evaluation.metrics import paired_delta

    data = eval_set(dataset, data_root, docs)
    adapter = "medical" if dataset == "medical_abstracts" else None
    vectors = {mode: encode(emb, MODES[mode], data.texts, adapter) for mode, emb in embs.items()}
    reference = vectors.get("fp32")
    ref_score, ref_correct = data.score(torch.from_numpy(reference))
    rows = {}
    for mode, vec in vectors.items():
        score, correct = data.score(torch.from_numpy(vec))
        row: dict[str, Any] = {data.metric: score, "delta": score - ref_score,
                               "min_cosine": float((vec * reference).sum(1).min()),
                               "texts": len(data.texts), "adapter": adapter}
        if correct is not None and mode != "fp32":
            ci = paired_delta(np.array(ref_correct), np.array(correct))
            row.update(ci95_low=ci["ci95_low"], ci95_high=ci["ci95_high"],
                       within_ci=bool(ci["ci95_low"] <= 0 <= ci["ci95_high"]))
        rows[mode] = row
    return rows


def compiled(texts: list[str], rounds: int) -> dict[str, dict[str, Any]]:
    """Eager vs torch.compile'd model, batches padded to length buckets (fp32 and bf16)."""
    from benchmarks.bench.models import load_base
    from lastlayer.config import ModelConfig

    out = {}
    for dtype in ("float32", "bfloat16"):
        enc = load_base(ModelConfig(name_or_path=MODEL, dtype=dtype), "cpu")
        batches = {b: enc.tokenizer(texts, padding="max_length", truncation=True,
                                    max_length=b, return_tensors="pt") for b in BUCKETS}
        eager = enc.model
        fast = torch.compile(enc.model, dynamic=False)
        row: dict[str, Any] = {"compile_s": {}}
        with torch.inference_mode():
            for bucket, batch in batches.items():
                start = time.perf_counter()
                fast(**batch)
                row["compile_s"][bucket] = time.perf_counter() - start
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(rounds):
                for name, model in (("eager", eager), ("compiled", fast)):
                    start = time.perf_counter()
                    for batch in batches.values():
                        model(**batch)
                    times[name].append(time.perf_counter() - start)
        per = {name: len(texts) * len(BUCKETS) / statistics.median(t)
               for name, t in times.items()}
        row.update(eager_texts_per_s=per["eager"], compiled_texts_per_s=per["compiled"],
                   speedup=per["compiled"] / per["eager"])
        out[dtype] = row
    return out


def compiled_blocks(texts: list[str], rounds: int) -> dict[str, dict[str, Any]]:
    """An Embedder whose base blocks are torch.compile'd (dynamic shapes) against an eager
    one, same texts, interleaved rounds (fp32 and bf16)."""
    from lastlayer.core.layers import find_layer_stack
    from lastlayer.inference import Embedder

    out = {}
    for dtype in ("float32", "bfloat16"):
        eager, fast = Embedder(MODEL, dtype=dtype), Embedder(MODEL, dtype=dtype)
        blocks = fast.model.get_submodule(find_layer_stack(fast.model).prefix)
        for i, block in enumerate(blocks):  # before the first call: the engine's views
            blocks[i] = torch.compile(block, dynamic=True)  # hold the blocks they find
        start = time.perf_counter()
        fast.encode(texts, progress=False)
        row: dict[str, Any] = {"first_call_s": time.perf_counter() - start}
        eager.encode(texts, progress=False)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        vectors = {}
        for r in range(rounds):
            for name, emb in ((("eager", eager), ("compiled", fast)) if r % 2 == 0
                              else (("compiled", fast), ("eager", eager))):
                start = time.perf_counter()
                vectors[name] = emb.encode(texts, progress=False).vectors
                times[name].append(time.perf_counter() - start)
        per = {name: len(texts) / statistics.median(t) for name, t in times.items()}
        row.update(eager_texts_per_s=per["eager"], compiled_texts_per_s=per["compiled"],
                   speedup=per["compiled"] / per["eager"], min_cosine=float(np.min(
                       (vectors["eager"] * vectors["compiled"]).sum(1))))
        out[dtype] = row
    return out


def format_table(result: dict[str, Any]) -> str:
    lines = [f"CPU: {result['machine']['cpu']}, {result['machine']['threads']} threads, "
             f"load {result['machine']['load_before']:.1f}", "",
             "| mode | texts/s | vs fp32 | " + " | ".join(
                 f"{d} (Δ, min cos)" for d in result["quality"]) + " |",
             "|---|---|---|" + "---|" * len(result["quality"])]
    for mode, row in result["speed"].items():
        cells = []
        for rows in result["quality"].values():
            q = rows[mode]
            within = "" if "within_ci" not in q else (" ✓" if q["within_ci"] else " ✗")
            cells.append(f"{q['delta']:+.3f}{within}, {q['min_cosine']:.5f}")
        ratio = f"{row['vs_fp32']:.2f}×" if row["vs_fp32"] else ""
        lines.append(f"| {mode} | {row['texts_per_s']:.0f} | {ratio} | " + " | ".join(cells)
                     + " |")
    for dtype, row in result.get("compile", {}).items():
        lines.append(f"\ntorch.compile {dtype}: {row['speedup']:.2f}× "
                     f"({row['eager_texts_per_s']:.0f} → {row['compiled_texts_per_s']:.0f} "
                     f"texts/s), compile s per bucket "
                     + ", ".join(f"{b}: {s:.1f}" for b, s in row["compile_s"].items()))
    for dtype, row in result.get("compile_blocks", {}).items():
        lines.append(f"\ntorch.compile per block, dynamic shapes, {dtype}: "
                     f"{row['speedup']:.2f}× ({row['eager_texts_per_s']:.0f} → "
                     f"{row['compiled_texts_per_s']:.0f} texts/s), first call "
                     f"{row['first_call_s']:.1f} s, min cosine {row['min_cosine']:.5f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from lastlayer.core.precision import detect

    result: dict[str, Any] = {"machine": {
        "cpu": cpu_description(), "threads": args.threads, "torch": torch.__version__,
        "load_before": load_1min(), "auto": str(detect("cpu"))}}
    if "fp32" not in args.modes:
        args.modes = ["fp32", *args.modes]
    embs = embedders(args.modes)
    medical = eval_set("medical_abstracts", args.data_root, args.docs).texts
    result["speed"] = speed(embs, medical[: args.texts], args.rounds)
    result["quality"] = {d: quality(embs, d, args.data_root, args.docs) for d in args.datasets}
    if args.compile:
        result["compile"] = compiled(medical[: args.texts], args.rounds)
        result["compile_blocks"] = compiled_blocks(medical[: args.texts], args.rounds)
    result["machine"]["load_after"] = load_1min()
    write_json(args.out, result)
    print(format_table(result))
    return result


if __name__ == "__main__":
    main()
