"""Multi-adapter inference: lastlayer's Embedder against PEFT and sentence-transformers.

(~480 lines: three systems measured side by side in one run, each with its own loader;
the shared parts are in ``benchmarks.bench``.)

Usage (offline; one run, every ratio taken between systems measured in that same run)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.inference \
        --out benchmarks/results/inference.json
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.inference --quick  # fewer texts, repeats
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.inference --quick --models minilm \
        --sizes 16  # the mixed-batch table at 16 texts only
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.inference --only-mixes \
        --sizes 16 64 256  # only the mixed-batch table (no PEFT, ST, memory rows)

Two bases, each with 4 LoRA adapters:

- ``smollm2``: SmolLM2-135M-Instruct (packaged GGUF, dequantized to fp32) with the four
  shipped top-4 LoRA adapters (medical, ohsumed, news, movie_reviews), plus optionally a
  full-kind top-4 adapter (``--full-adapter``; none is shipped) for memory and load time;
- ``minilm``: all-MiniLM-L6-v2 (packaged sentence-transformers folder) with the shipped
  ``adapters/medical/minilm-l6_lora-top2_crop`` loaded under 4 names, standing in for 4
  domain adapters (4 private heads, exactly as 4 different adapters would cost).

Texts are the first ``--texts`` medical abstracts, truncated at the adapters' own
``max_length`` (``lastlayer.json``), embedded ``--batch-size`` at a time, longest first.
Measured, each ``--repeats`` times, interleaved (one round runs every system once, the
starting system rotating), median kept:

1. ``all4``: ``Embedder.encode_all(texts, 4 adapters)`` (one bottom pass per batch) vs
   ``peft-separate``: one ``PeftModel`` holding the 4 adapters (``PeftModel.from_pretrained``
   + ``load_adapter``), ``set_adapter(name)`` then a plain forward + the same pooling, 4 times;
2. ``mixed``: one call whose rows mix the 4 adapters round-robin (``adapter=[...]``) vs
   ``single``: the same texts under one adapter (Embedder), vs ``peft-mixed``: PEFT's own
   mixed batch (``PeftModel.forward(..., adapter_names=[...])``, eval mode), and (MiniLM
   only) vs ``st-grouped``: sentence-transformers switching adapters group by group
   (``SentenceTransformer.load_adapter`` / ``set_adapter``; it cannot read the GGUF SmolLM2);
3. the mixed-batch table (:mod:`benchmarks.bench.mixes`): Punica's mixes (identical,
   uniform, skewed, distinct over up to ``--mix-adapters`` 16 adapters, random ones made on
   the same base by :mod:`benchmarks.bench.random_adapters`) at ``--sizes`` 16, 64 and 256
   texts, each as the median paired ratio to a single-adapter batch of the same texts,
   timed interleaved in the same rounds;
4. per adapter: the bytes of its private parameters and buffers (exact: tensors not shared
   with the base), the resident-memory growth on loading it (noisy), its load time, and
   PEFT's ``set_adapter`` switch time (the Embedder needs no switch).

Every lastlayer row reports its roofline (:mod:`benchmarks.bench.roofline`): the GFLOP/s
it achieved, counted from the model's shapes and the real tokens, and the fraction of the
machine's fp32 peak (from its CPU flags and clock) and of a large matmul's measured peak.
Each system's vectors are checked against the others' (``max_abs_diff``). Torch runs on
``--threads`` threads; the machine (cores, threads, load average at start and end) is
written into the results.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench import MEDICAL, ROOT, mixes, models, tables
from benchmarks.bench.measure import cpu_description, rss_mb
from benchmarks.bench.random_adapters import random_adapters
from benchmarks.bench.results import write_json
from benchmarks.bench.roofline import (
    PRECISIONS,
    clock_ghz,
    measured_peak,
    roofline,
    theoretical_peak,
)

DEFAULT_DATA = MEDICAL
DOMAINS = ["medical", "ohsumed", "news", "movie_reviews"]
MODELS = {
    "smollm2": {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "adapters": {d: ROOT / "adapters" / d / "smollm2-135m_lora-top4_crop" for d in DOMAINS},
        "st": False,
    },
    "minilm": {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "adapters": {f"m{i}": ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
                     for i in range(1, 5)},
        "st": True,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--texts", type=int, default=None, help="default 64 (--quick: 8)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-adapter", help="a full-kind SmolLM2 top-4 artifact (memory, "
                        "load time); train one with train.max_steps=2")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="texts per mixed-batch row (default 16 64 256; --quick: 16)")
    parser.add_argument("--mix-adapters", type=int, default=16,
                        help="adapters the mixes spread over (random ones added to the "
                        "shipped; benchmarks/bench/random_adapters.py)")
    parser.add_argument("--no-mixes", action="store_true", help="skip the mixed-batch table")
    parser.add_argument("--only-mixes", action="store_true",
                        help="only the mixed-batch table (no PEFT, sentence-transformers, "
                        "all4 or memory rows)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: profile one encode of --texts texts through "
                        "the first adapter, --batch-size at a time (torch.profiler, ops by "
                        "self CPU time, and the tokenizer's share)")
    parser.add_argument("--heap", choices=["kept", "default"], default="kept",
                        help="kept: freed memory kept for reuse, as the lastlayer command and "
                        "lastlayer.core.allocator.keep_freed_memory() set it (every system in "
                        "this process alike); default: glibc's defaults")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.only_mixes and args.no_mixes:
        parser.error("--only-mixes and --no-mixes exclude each other")
    args.texts = args.texts or (8 if args.quick else 64)
    args.sizes = args.sizes or ([16] if args.quick else [16, 64, 256])
    args.repeats = args.repeats or (3 if args.quick else 5)
    return args


def machine(threads: int) -> dict[str, Any]:
    """The CPU (model and flags), cores, torch threads, the 1-minute load and the peaks
    (GFLOP/s per precision on ``threads`` cores: from the flags, and measured)."""
    peaks = {p: {"theoretical": theoretical_peak(p, threads), "measured": measured_peak(p, threads)}
             for p in PRECISIONS}
    return {"cpu": cpu_description(), "cores": os.cpu_count(), "torch_threads": threads,
            "load_1min": os.getloadavg()[0], "clock_ghz": clock_ghz(), "peak_gflops": peaks}


def private_bytes(module, base) -> int:
    """Bytes of ``module``'s parameters and buffers whose storage the base does not own."""
    shared = {t.untyped_storage().data_ptr() for t in [*base.parameters(), *base.buffers()]}
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in shared or ptr in seen:
            continue
        seen.add(ptr)
        total += tensor.untyped_storage().nbytes()
    return total


def head_bytes(embedder, name: str) -> int:
    """Bytes adapter ``name``'s head owns in ``embedder``, as the memory budget counts them."""
    return embedder.owned_bytes(embedder.resident([name])[name])


def timed(fn) -> tuple[float, Any]:
    """``(seconds, (fn(), RSS growth in MB or None))``, after a garbage collection."""
    gc.collect()
    rss = rss_mb()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    grown = rss_mb()
    return seconds, (result, None if rss is None or grown is None else grown - rss)


# ---------------------------------------------------------------------------------------
# The systems.


def peft_model(model_name: str, adapters: dict[str, Path], settings):
    """A plain encoder wrapped by one ``PeftModel`` holding every adapter; load times."""
    from lastlayer.config import ModelConfig

    encoder = models.load_base(ModelConfig(name_or_path=model_name, pooling=settings.pooling,
                                           normalize=settings.normalize,
                                           max_length=settings.max_length), device="cpu")
    base_params = list(encoder.model.parameters())
    loads = {}
    for name, path in adapters.items():
        loads[name], _ = timed(lambda n=name, p=path: models.add_peft_adapter(encoder, n, p))
    encoder.model.eval()
    per_adapter = {}
    for name in adapters:  # LoRA weights are named ...lora_A.<name>.weight
        per_adapter[name] = sum(p.numel() * p.element_size()
                                for n, p in encoder.model.named_parameters()
                                if f".{name}." in n)
    del base_params
    return encoder, loads, per_adapter


def peft_separate(encoder, names: list[str], texts: list[str], batch_size: int):
    out = {}
    for name in names:
        encoder.model.set_adapter(name)
        out[name] = encoder.encode(texts, batch_size=batch_size, progress=False).numpy()
    return out


def peft_mixed(encoder, keys: list[str], texts: list[str], batch_size: int) -> np.ndarray:
    """PEFT's mixed batch: ``adapter_names`` gives each row its adapter (eval mode only)."""
    import torch

    from lastlayer.core.encoder import longest_first_batches

    out = np.zeros((len(texts), 0), dtype=np.float32)
    rows: dict[int, np.ndarray] = {}
    with torch.inference_mode():
        for idx in longest_first_batches(texts, batch_size):
            batch = encoder.tokenize([texts[i] for i in idx])
            states = encoder.model(**batch, adapter_names=[keys[i] for i in idx]).last_hidden_state
            vectors = encoder.pool(states, batch["attention_mask"]).numpy()
            rows.update(zip(idx, vectors, strict=True))
    out = np.stack([rows[i] for i in range(len(texts))])
    return out


def st_model(folder: str, adapters: dict[str, Path], max_length: int):
    from peft import PeftConfig
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(folder, device="cpu")
    model.max_seq_length = max_length
    loads = {}

    def load(name: str, path: Path) -> None:
        # load_adapter(folder) leaves the LoRA weights freshly initialised here: PEFT saved
        # them as base_model.model.<key>, which transformers' loader does not map onto the
        # bare BertModel; passing the state dict with that prefix removed loads them.
        state = {k.removeprefix("base_model.model."): v
                 for k, v in load_file(path / "adapter_model.safetensors").items()}
        model.load_adapter(peft_config=PeftConfig.from_pretrained(str(path)),
                           adapter_state_dict=state, adapter_name=name)

    for name, path in adapters.items():
        loads[name], _ = timed(lambda n=name, p=path: load(n, p))
    model.eval()
    return model, loads


def st_grouped(model, keys: list[str], texts: list[str], batch_size: int) -> np.ndarray:
    """sentence-transformers: one ``set_adapter`` + ``encode`` per adapter's group of rows."""
    out = np.zeros((len(texts), model.get_sentence_embedding_dimension()), dtype=np.float32)
    for name in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == name]
        model.set_adapter(name)
        out[idx] = model.encode([texts[i] for i in idx], batch_size=batch_size,
                                convert_to_numpy=True, show_progress_bar=False)
    return out


def median_switch_s(encoder, names: list[str], calls: int = 200) -> float:
    times = []
    for i in range(calls):
        start = time.perf_counter()
        encoder.model.set_adapter(names[i % len(names)])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------
# One base.


def profile_model(key: str, args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """Where one ``encode`` of ``texts`` spends its time: torch ops by self CPU time, and
    the tokenizer alone (its call as the engine makes it), after three warm-up calls."""
    from torch.profiler import profile

    from lastlayer.inference import Embedder

    spec = MODELS[key]
    name, path = next(iter(spec["adapters"].items()))
    embedder = Embedder(spec["model"], device="cpu")
    embedder.load(path, name)
    run = lambda: embedder.encode(texts, adapter=name, batch_size=args.batch_size,  # noqa: E731
                                  progress=False)
    for _ in range(3):
        run()
    seconds = statistics.median(timed(run)[0] for _ in range(5))
    max_length = embedder.adapters[name].max_length
    tokenize = statistics.median(timed(lambda: embedder.tokenizer(
        texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))[0]
        for _ in range(5))
    with profile() as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ops = [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total} for e in events[:12]]
    print(f"[{key}] encode {len(texts)} texts: {seconds * 1e3:.1f} ms (median of 5), "
          f"tokenizing alone {tokenize * 1e3:.1f} ms")
    print(tables.markdown(["op", "calls", "self ms", "share"],
                          [[o["op"], o["calls"], f"{o['self_ms']:.1f}", f"{o['share']:.0%}"]
                           for o in ops]))
    return {"model": spec["model"], "adapter": name, "texts": len(texts),
            "encode_s": seconds, "tokenize_s": tokenize, "ops": ops}


def bench_model(key: str, args: argparse.Namespace, all_texts: list[str]) -> dict[str, Any]:
    from lastlayer import artifact
    from lastlayer.inference import Embedder

    texts = all_texts[: args.texts]
    spec = MODELS[key]
    adapters: dict[str, Path] = spec["adapters"]
    names = list(adapters)
    settings = artifact.read(adapters[names[0]]).embedding
    result: dict[str, Any] = {"model": spec["model"], "adapters": {n: str(p.relative_to(ROOT))
                              for n, p in adapters.items()},
                              "max_length": settings.max_length, "texts": len(texts),
                              "batch_size": args.batch_size, "repeats": args.repeats}
    print(f"[{key}] loading the Embedder ...", flush=True)
    base_s, (embedder, base_rss) = timed(lambda: Embedder(spec["model"], device="cpu"))
    memory = {"base_load_s": base_s, "base_rss_mb": base_rss,
              "base_bytes": private_bytes(embedder.model, _Empty())}
    per = {}
    for name, path in adapters.items():
        seconds, (_, rss) = timed(lambda n=name, p=path: embedder.load(p, n))
        per[name] = {"load_s": seconds, "rss_mb": rss,
                     "private_bytes": head_bytes(embedder, name)}
    memory["lastlayer_lora_merged"] = _summary(per)
    if args.only_mixes:
        result["memory"] = memory
        return _with_mixes(result, embedder, names, adapters, args, all_texts)
    seconds, (_, rss) = timed(lambda: embedder.load(adapters[names[0]], "unmerged", merge=False))
    memory["lastlayer_lora_unmerged"] = {
        "load_s": seconds, "rss_mb": rss,
        "private_bytes": head_bytes(embedder, "unmerged")}
    full = args.full_adapter if key == "smollm2" else None
    if full:
        seconds, (_, rss) = timed(lambda: embedder.load(full, "full"))
        memory["lastlayer_full"] = {
            "load_s": seconds, "rss_mb": rss, "path": str(full),
            "private_bytes": head_bytes(embedder, "full")}
    print(f"[{key}] loading PEFT ...", flush=True)
    encoder, peft_loads, peft_bytes = peft_model(spec["model"], adapters, settings)
    memory["peft_lora"] = {"load_s": statistics.median(peft_loads.values()),
                           "load_s_each": peft_loads,
                           "private_bytes": statistics.median(peft_bytes.values())}
    memory["peft_set_adapter_s"] = median_switch_s(encoder, names)
    st = None
    if spec["st"]:
        print(f"[{key}] loading sentence-transformers ...", flush=True)
        folder = models.resolve(spec["model"]).path
        st, st_loads = st_model(folder, adapters, settings.max_length)
        memory["st_lora"] = {"load_s": statistics.median(st_loads.values()),
                             "load_s_each": st_loads}
    result["memory"] = memory

    keys = [names[i % len(names)] for i in range(len(texts))]
    bs = args.batch_size
    systems = {
        "all4": lambda: embedder.encode_all(texts, names, batch_size=bs),
        "peft-separate": lambda: peft_separate(encoder, names, texts, bs),
        "single": lambda: embedder.encode(texts, adapter=names[0], batch_size=bs,
                                          progress=False).vectors,
        "mixed": lambda: embedder.encode(texts, adapter=keys, batch_size=bs,
                                         progress=False).vectors,
        "peft-mixed": lambda: peft_mixed(encoder, keys, texts, bs),
    }
    if st is not None:
        systems["st-grouped"] = lambda: st_grouped(st, keys, texts, bs)
    outputs = {name: run() for name, run in systems.items()}  # warm-up, and the check
    result["max_abs_diff"] = _checks(outputs, names, keys)
    times: dict[str, list[float]] = {name: [] for name in systems}
    order = list(systems)
    for r in range(args.repeats):
        rotated = order[r % len(order):] + order[: r % len(order)]
        for name in rotated:
            seconds, _ = timed(systems[name])
            times[name].append(seconds)
        print(f"[{key}] round {r + 1}/{args.repeats}: " + ", ".join(
            f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    result["seconds"] = {name: statistics.median(t) for name, t in times.items()}
    result["seconds_all"] = times
    result["ratios"] = _ratios(result["seconds"])
    result["roofline"] = _rooflines(embedder, names, texts, result["seconds"], args.threads)
    return result if args.no_mixes else _with_mixes(result, embedder, names, adapters, args,
                                                    all_texts)


def _with_mixes(result: dict[str, Any], embedder, names: list[str], adapters: dict[str, Path],
                args: argparse.Namespace, all_texts: list[str]) -> dict[str, Any]:
    """``result`` with the mixed-batch table's rows (:func:`mixes.bench_mixes`)."""
    print(f"[{result['model']}] mixed batches ...", flush=True)
    mixed = _mix_names(embedder, names, adapters[names[0]], args.mix_adapters)
    result["mixes"] = mixes.bench_mixes(embedder, mixed, all_texts, args.sizes, args.repeats,
                                        args.batch_size, args.threads)
    return result


def _mix_names(embedder, names: list[str], source: Path, count: int) -> list[str]:
    """``count`` adapter names for the mixes: the shipped ones, then random artifacts on the
    same base (made once and cached) loaded as ``r0``, ``r1``, ..."""
    extra = random_adapters(source, max(0, count - len(names)))
    return [*names, *(embedder.load(path, f"r{i}") for i, path in enumerate(extra))][:count]


def _rooflines(embedder, names: list[str], texts: list[str], seconds: dict[str, float],
               threads: int) -> dict[str, dict[str, Any]]:
    """The roofline of lastlayer's timed rows, in the precision the Embedder computes in
    (its default, ``auto``: bf16 on a CPU with native bf16): ``single`` and ``mixed`` run
    every block once per text, ``all4`` the bottom once and each adapter's k blocks."""
    import torch

    tokens = embedder.encode(texts, adapter=names[0], progress=False).tokens.tolist()
    config = embedder.model.config
    top_k = embedder.adapters[names[0]].top_k
    blocks = {"single": None, "mixed": None,
              "all4": config.num_hidden_layers - top_k + len(names) * top_k}
    precision = "bf16" if embedder.model.dtype == torch.bfloat16 else "fp32"
    peak = measured_peak(precision, threads)
    return {name: roofline(config, tokens, seconds[name], precision, blocks=b, cores=threads,
                           measured=peak)
            for name, b in blocks.items() if name in seconds}


class _Empty:
    """A stand-in base that owns nothing (to count the base's own bytes)."""

    def parameters(self):
        return []

    def buffers(self):
        return []


def _summary(per: dict[str, dict]) -> dict[str, Any]:
    return {"load_s": statistics.median(p["load_s"] for p in per.values()),
            "rss_mb": statistics.median(p["rss_mb"] for p in per.values()
                                        if p["rss_mb"] is not None),
            "private_bytes": statistics.median(p["private_bytes"] for p in per.values()),
            "each": per}


def _checks(outputs: dict[str, Any], names: list[str], keys: list[str]) -> dict[str, float]:
    """Largest difference between systems that should give the same vectors."""
    def diff(a, b) -> float:
        return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))

    mixed_ref = np.stack([outputs["all4"][k][i] for i, k in enumerate(keys)])
    checks = {
        "all4_vs_peft_separate": max(diff(outputs["all4"][n], outputs["peft-separate"][n])
                                     for n in names),
        "mixed_vs_all4": diff(outputs["mixed"], mixed_ref),
        "peft_mixed_vs_all4": diff(outputs["peft-mixed"], mixed_ref),
        "single_vs_all4": diff(outputs["single"], outputs["all4"][names[0]]),
    }
    if "st-grouped" in outputs:
        checks["st_grouped_vs_all4"] = diff(outputs["st-grouped"], mixed_ref)
    return checks


TARGETS = {  # ratio: (faster system, baseline, target); > 1 means lastlayer is faster
    "all4_vs_peft_separate": ("all4", "peft-separate", 2.5),
    "mixed_vs_single": ("mixed", "single", 0.9),
    "mixed_vs_peft_mixed": ("mixed", "peft-mixed", 1.0),
    "mixed_vs_st_grouped": ("mixed", "st-grouped", None),
}


def _ratios(seconds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Throughput ratios (baseline time / lastlayer time) for the same work."""
    ratios = {}
    for name, (ours, theirs, target) in TARGETS.items():
        if ours in seconds and theirs in seconds:
            ratio = seconds[theirs] / seconds[ours]
            ratios[name] = {"ratio": ratio, "target": target,
                            "met": None if target is None else ratio >= target}
    return ratios


def format_table(results: dict[str, Any]) -> str:
    """Three tables: the timed ratios against their targets (lastlayer's GFLOP/s and
    fraction of the fp32 peak beside them), memory and load time per adapter (and PEFT's
    switch time), then the mixed batches against single-adapter batches."""
    ratios, memory, mixed = [], [], []
    for key, res in results["models"].items():
        s = res.get("seconds", {})
        for name, r in res.get("ratios", {}).items():
            ours, theirs, _ = TARGETS[name]
            target = "—" if r["target"] is None else f"≥ {r['target']}×"
            met = "—" if r["met"] is None else ("yes" if r["met"] else "no")
            roof = res.get("roofline", {}).get(ours)
            ratios.append([key, f"{ours} vs {theirs}", f"{s[ours]:.2f}", f"{s[theirs]:.2f}",
                           f"{r['ratio']:.2f}×", target, met,
                           "—" if roof is None else f"{roof['gflops']:.1f}",
                           "—" if roof is None else f"{100 * roof['fraction_of_peak']:.1f} %"])
        mixed += mixes.table_rows(key, res.get("mixes", []))
    for key, res in results["models"].items():
        for kind in ("lastlayer_lora_merged", "lastlayer_lora_unmerged", "lastlayer_full",
                     "peft_lora", "st_lora"):
            m = res["memory"].get(kind)
            if m is None:
                continue
            private = m.get("private_bytes")
            private = "—" if private is None else f"{private / 2**20:.2f}"
            memory.append([key, kind, private, tables.fmt(m.get("rss_mb"), ".1f"),
                           f"{m['load_s']:.2f}"])
        if "peft_set_adapter_s" in res["memory"]:
            memory.append([key, "PEFT set_adapter (switch)", "", "",
                           f"{res['memory']['peft_set_adapter_s'] * 1e3:.3f} ms"])
    return "\n\n".join([
        *([tables.markdown(["model", "measurement", "lastlayer s", "baseline s", "ratio",
                            "target", "met", "GFLOP/s", "of peak"], ratios)] if ratios else []),
        tables.markdown(["model", "adapter", "private MB", "RSS growth MB", "load s"], memory),
        *([tables.markdown(mixes.HEADER, mixed)] if mixed else [])])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from lastlayer.core.allocator import keep_freed_memory

    heap = "kept" if args.heap == "kept" and keep_freed_memory() else "glibc defaults"
    import torch

    torch.set_num_threads(args.threads)
    from lastlayer.corpus import read_texts

    texts = read_texts(args.data, max_docs=max(args.texts, *args.sizes))
    results: dict[str, Any] = {"command": "python -m benchmarks.inference" + (
        " --quick" if args.quick else ""), "argv": argv if argv is not None else sys.argv[1:],
        "machine_start": machine(args.threads), "heap": heap, "models": {}}
    started = time.perf_counter()
    for key in args.models:
        if args.profile:
            results["models"][key] = profile_model(key, args, texts[: args.texts])
            continue
        results["models"][key] = bench_model(key, args, texts)
        gc.collect()
    results["machine_end"] = machine(args.threads)
    results["wall_s"] = time.perf_counter() - started
    if not args.profile:
        print(format_table(results))
    if args.out:
        write_json(Path(args.out), results)
    return results


if __name__ == "__main__":
    main()
