"""Speed, memory and quality of lastlayer against sentence-transformers, side by side.

Why one script of ~600 lines: the worker (one system's run, in its own subprocess:
``--worker SPEC``) and the orchestrating process (plan, specs, rows, table) share the spec
and row format (``plan``, ``specs_for``, ``REQUIRED_KEYS``), and a worker is this very
module run again; the shared measuring code is already :mod:`benchmarks.bench`'s.

Every system trains the same model on the same positive pairs (seeded crop views of
medical abstracts, made by ``lastlayer.training.views.crop_views`` through lastlayer's own
``PairStream``), with the same batch size, sequence length, precision (fp32, or bf16
autocast for all with ``--precision bf16``; ``--precision fp32 bf16`` runs every system in
both, interleaved, and takes the ratios against sentence-transformers' faster one), loss
(InfoNCE with in-batch negatives at temperature 0.05 = MultipleNegativesRankingLoss at
scale 20), optimizer (AdamW, linear warm-up/decay, gradient clipping at 1.0) and number of
steps:

==========================  ==============  ==============================================
system                      mode            what runs
==========================  ==============  ==============================================
sentence-transformers       full            full fine-tuning: a plain loop over the
                                            ``SentenceTransformer`` + ``MultipleNegatives
                                            RankingLoss`` (forward, loss, backward, AdamW)
sentence-transformers       full-nodrop     the same with the model's dropout switched off
                                            (``lastlayer.training.objectives.disable_dropout``)
sentence-transformers       lora-all        the same with ``model.add_adapter(LoraConfig)``
                                            on every linear layer of every block (PEFT)
lastlayer                   lora-top2       ``lastlayer.training.run.fit``: LoRA on the
                                            top-2 blocks, fresh views every step
lastlayer                   full-top2       the same, top-2 blocks unfrozen
lastlayer                   lora-top2-      ``train.cached_pairs``: the pairs' block-(L-2)
                            cached          inputs are computed once, then only the top-2
                                            blocks run; the one-off caching time is reported
                                            separately (``cache_s``) and amortised over the
                                            steps (``step_s_amortised``)
lastlayer                   lora-top2-      the same with ``train.group_by_length``: batches
                            cached-grouped  of cached pairs of similar length (less padding)
lastlayer                   lora-top2-      the same with ``objective.model_dropout: false``:
                            cached-grouped- no dropout in the trained blocks, so SDPA's fused
                            nodrop          kernel runs and keeps no attention maps
==========================  ==============  ==============================================

lastlayer is timed *as shipped*: its real Accelerate loop (``fit``) runs, and a
global optimizer step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``)
stamps the end of every step; the sentence-transformers loop is timed by the same hook. A
step's time is the wall time between two consecutive optimizer steps (data, tokenization,
forward, loss, backward, clipping, step, scheduler, logging), the first ``--warmup`` steps
are dropped, and the median of the rest is kept; with ``--repeats R`` every system runs R
times, interleaved (A B C A B C ...), and the median of the per-run medians is reported.

Each run is its own subprocess, so ``peak_rss_mb`` is that system's own peak resident set
size (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` elsewhere), including the Python
interpreter, torch and the model. ``rss_loaded_mb`` is the resident size once the model is
loaded and ``train_rss_increase_mb`` is what training added on top (the peak is reset
after loading through ``/proc/self/clear_refs``). The cached modes reset it again after
caching: ``cache_peak_rss_mb`` is the caching phase's own peak and ``cache_mb`` the size
of the cached states; ``peak_rss_mb`` is the highest of the phases.

``--profile`` runs one step of each system under ``torch.profiler`` and prints where its
time goes, and where its memory goes: the tensors autograd saves for the backward (the
activations; distinct storages, counted with ``torch.autograd.graph.saved_tensors_hooks``)
at the profiled step, by shape.

Quality: without ``--quick``, each system's first run also embeds 1,000 held-out labelled
abstracts (never trained on) and reports leave-one-out kNN accuracy (k=10, euclidean,
``lastlayer.evaluation.metrics.knn_accuracy``); ``base_knn_accuracy`` is the untrained model's.

Usage (offline; timings are only meaningful as ratios within one run, on a quiet machine)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.speed --quick --wait-load 0.8
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.speed --steps 30 --repeats 3 \\
        --out benchmarks/results/speed_full.json

``--quick`` (under 10 minutes on 2 cores): MiniLM only, sentence-transformers full
fine-tuning vs lastlayer top-2 LoRA and top-2 LoRA from cache with length-grouped
batches, no quality column.

Longer than the ~400 lines a module aims at, for a reason: the three systems (the
sentence-transformers loop, lastlayer's shipped steps, the untrained base), the worker
that runs one of them in a fresh process, its rows and the orchestration of interleaved
repeats are one measurement and read best together; what other benchmarks share with it
(memory, step clock, profiling, workers, tables) is in :mod:`benchmarks.bench`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import MEDICAL, RESULTS, ROOT, models, tables
from benchmarks.bench.measure import (
    machine_description,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    wait_for_quiet,
)
from benchmarks.bench.steps import StepClock, profiled
from benchmarks.bench.workers import reply, run_worker

DEFAULT_DATA = MEDICAL
DEFAULT_OUT = RESULTS / "speed.json"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

ST, LL = "sentence-transformers", "lastlayer"
REQUIRED_KEYS = ("system", "model", "mode", "step_s_median", "pairs_per_s", "peak_rss_mb",
                 "knn_accuracy", "machine")


def plan(quick: bool, top_k: int = 2) -> list[tuple[str, str]]:
    """The (system, mode) pairs a run measures, in the order they are interleaved."""
    lora, full, cached = f"lora-top{top_k}", f"full-top{top_k}", f"lora-top{top_k}-cached"
    grouped = f"{cached}-grouped"
    if quick:  # the fastest cached mode only, to stay under 10 minutes on 2 cores
        return [(ST, "full"), (LL, lora), (LL, grouped)]
    return [(ST, "full"), (ST, "full-nodrop"), (ST, "lora-all"), (LL, lora), (LL, full),
            (LL, cached), (LL, grouped), (LL, f"{grouped}-nodrop")]


# ---------------------------------------------------------------------------------------
# Data: held-out labelled documents, training documents, pairs.


def load_data(spec: dict[str, Any]):
    """``(held_out EvalSet, training documents)``: held-out docs are never trained on, and
    both are chosen exactly as ``lastlayer train`` chooses them for this data and seed."""
    from benchmarks.bench.protocol import held_out_split

    return held_out_split(spec["data"], spec["eval_docs"], spec["seed"])


def knn(vectors, labels: list[str]) -> float:
    """Leave-one-out kNN accuracy (k=10, euclidean), as ``lastlayer train`` measures it."""
    import numpy as np

    from lastlayer.evaluation.metrics import knn_accuracy

    return knn_accuracy(np.asarray(vectors, dtype=np.float32), labels, 10, "euclidean").accuracy


# ---------------------------------------------------------------------------------------
# The systems.


def model_folder(name: str) -> str:
    """A local folder with the model's weights (lastlayer's resolver: path, cache, packaged)."""
    resolved = models.resolve(name)
    if resolved.gguf_file:
        raise SystemExit(f"{name}: a GGUF checkpoint; the sentence-transformers baseline needs "
                         "a folder with safetensors weights (see safetensors_copy).")
    return resolved.path


def safetensors_copy(name: str) -> str:
    """``name`` itself, or for a GGUF checkpoint (the packaged SmolLM2) a folder holding its
    dequantized weights as safetensors, written once under ``runs/models/``.

    sentence-transformers cannot read GGUF; both systems then load this same folder, so they
    train exactly the same fp32 weights (the ones lastlayer's GGUF loader dequantizes).
    Runs in a worker (:func:`main` calls it through :func:`run_worker`).
    """
    from lastlayer.artifact import write_atomically

    resolved = models.resolve(name)
    if not resolved.gguf_file:
        return name
    folder = ROOT / "runs" / "models" / resolved.hub_id.replace("/", "--")
    if not (folder / "config.json").exists():
        print(f"writing {name} (GGUF, dequantized) as safetensors to {folder} ...", flush=True)
        encoder = models.load_base(name, device="cpu")

        def write(tmp: Path) -> None:  # save_pretrained refuses models loaded from GGUF
            from safetensors.torch import save_file

            state = {k: v.contiguous() for k, v in encoder.model.state_dict().items()}
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            settings = encoder.model.config.to_dict()
            settings.pop("quantization_config", None)  # the GGUF marker: these are plain fp32
            type(encoder.model.config).from_dict(settings).save_pretrained(tmp)
            encoder.tokenizer.save_pretrained(tmp)  # with its pad token (EOS) set

        write_atomically(folder, write)
    return str(folder)


def run_sentence_transformers(spec: dict[str, Any], docs: list[str], held_out) -> dict[str, Any]:
    """Full fine-tuning (or PEFT LoRA on all layers) with MNRL in a plain training loop."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from benchmarks.bench.protocol import crop_pairs
    from lastlayer.core.layers import find_layer_stack, top_k_linear_names
    from lastlayer.training.objectives import disable_dropout

    device = "cuda" if torch.cuda.is_available() and not spec["cpu"] else "cpu"
    model = SentenceTransformer(model_folder(spec["model"]), device=device)
    model.max_seq_length = spec["max_length"]
    if spec["mode"] == "full-nodrop":
        disable_dropout(model)
    elif spec["mode"] == "lora-all":
        from peft import LoraConfig

        hf = model.transformers_model
        names = top_k_linear_names(hf, find_layer_stack(hf).num_layers, None)  # every block
        model.add_adapter(LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                                     target_modules=names))
    elif spec["mode"] != "full":
        raise ValueError(f"unknown sentence-transformers mode {spec['mode']!r}")
    loss_fn = MultipleNegativesRankingLoss(model, scale=1 / spec["temperature"])
    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = spec["warmup"] + spec["steps"]
    pairs = crop_pairs(docs, total_steps * spec["batch_size"], spec["seed"])

    def collate(batch: list[tuple[str, str]]) -> list[dict[str, Any]]:
        a, b = zip(*batch, strict=True)
        return [{k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in model.preprocess(list(side)).items()} for side in (a, b)]

    loader = DataLoader(pairs, batch_size=spec["batch_size"], collate_fn=collate,
                        drop_last=True, generator=torch.Generator().manual_seed(spec["seed"]))
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(0.1 * total_steps), total_steps)
    measured = _loaded(params, model.parameters())
    losses: list[float] = []
    model.train()
    with StepClock() as clock:
        for features in loader:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
                loss = loss_fn(features, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            losses.append(loss.item())
            if len(losses) >= total_steps:
                break
    measured.update(_trained(clock, losses, pairs.stats))
    if spec["eval"]:
        vectors = model.encode(held_out.texts, batch_size=32, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        measured["knn_accuracy"] = knn(vectors, held_out.labels)
    return measured


def run_lastlayer(spec: dict[str, Any], docs: list[str], held_out) -> dict[str, Any]:
    """lastlayer's shipped steps (``prepare``, then ``fit``: its real Accelerate loop) on a
    top-k adapter; its cache, when the mode has one, is built and timed in between."""
    from lastlayer.config import (
        AdapterConfig,
        DataConfig,
        ModelConfig,
        ObjectiveConfig,
        Recipe,
        TrainConfig,
    )
    from lastlayer.training.pairs import cached_pair_stream
    from lastlayer.training.run import fit, prepare

    mode, k = spec["mode"], spec["top_k"]
    kinds = {f"lora-top{k}": ("lora", False), f"full-top{k}": ("full", False),
             f"lora-top{k}-cached": ("lora", True), f"full-top{k}-cached": ("full", True),
             f"lora-top{k}-cached-grouped": ("lora", True),
             f"lora-top{k}-cached-grouped-nodrop": ("lora", True)}
    if mode not in kinds:
        raise ValueError(f"unknown lastlayer mode {mode!r}; one of {sorted(kinds)}")
    kind, cached = kinds[mode]
    total_steps = spec["warmup"] + spec["steps"]
    total_pairs = total_steps * spec["batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Recipe(
            model=ModelConfig(name_or_path=spec["model"], max_length=spec["max_length"]),
            adapter=AdapterConfig(kind=kind, top_k=k),
            data=DataConfig(train=spec["data"]),
            train=TrainConfig(max_steps=total_steps, batch_size=spec["batch_size"], lr=spec["lr"],
                              cpu=spec["cpu"], cached_pairs=total_pairs if cached else 0,
                              mixed_precision="bf16" if spec["precision"] == "bf16" else "no",
                              cache_dtype=spec.get("cache_dtype", "float32"),
                              group_by_length="-grouped" in mode),
            objective=ObjectiveConfig(model_dropout=not mode.endswith("-nodrop")),
            seed=spec["seed"], output_dir=str(Path(tmp) / "adapter"),
        )
        # no eval.data: the held-out documents are already out of ``docs``, and the kNN
        # below is measured the same way for every system
        job = prepare(recipe, documents=docs)
        encoder = job.encoder
        params = [p for p in encoder.model.parameters() if p.requires_grad]
        measured = _loaded(params, encoder.model.parameters())
        start = time.perf_counter()
        if cached:  # built here, outside the timed steps, and reported as cache_s
            job.pairs = cached_pair_stream(encoder, job.docs, recipe, total_pairs,
                                           spec["batch_size"])
            measured["cache_s"] = time.perf_counter() - start
            measured["cache_pairs"] = total_pairs
            measured["cache_mb"] = job.pairs.nbytes() / 2**20
            measured["cache_peak_rss_mb"] = peak_rss_mb()  # then training's own peak
            measured["peak_reset"] = measured["peak_reset"] and reset_peak_rss()
        with StepClock() as clock:
            result = fit(job)
    losses = [h["loss"] for h in result.history]
    measured.update(_trained(clock, losses, result.view_stats, clock.step_times()))
    if spec["eval"]:
        vectors = encoder.encode(held_out.texts, batch_size=32, progress=False)
        measured["knn_accuracy"] = knn(vectors.numpy(), held_out.labels)
    return measured


def run_base(spec: dict[str, Any], docs: list[str], held_out) -> dict[str, Any]:
    """kNN accuracy of the untrained model (the reference the trained ones are compared to)."""
    from lastlayer.config import ModelConfig

    encoder = models.load_base(ModelConfig(name_or_path=spec["model"],
                                           max_length=spec["max_length"]))
    vectors = encoder.encode(held_out.texts, batch_size=32, progress=False)
    return {"knn_accuracy": knn(vectors.numpy(), held_out.labels)}


def _loaded(trainable, all_params) -> dict[str, Any]:
    """Memory and size once the model is loaded; resets the peak to time training alone."""
    measured = {
        "load_peak_rss_mb": peak_rss_mb(),
        "rss_loaded_mb": rss_mb(),
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in all_params),
    }
    measured["peak_reset"] = reset_peak_rss()
    return measured


def _trained(clock: StepClock, losses: list[float], stats, times=None) -> dict[str, Any]:
    return {
        "step_times_s": times if times is not None else clock.step_times(),
        "train_peak_rss_mb": peak_rss_mb(),
        "losses": losses,
        "token_span_fallbacks": stats.token_span_fallbacks,
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one system/mode in this process and return its raw measurements.

    ``spec`` keys: system, mode, model, data, steps, warmup, batch_size, max_length, lr,
    temperature, top_k, seed, eval (bool), eval_docs, cpu (bool), threads (int or None).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    held_out, docs = load_data(spec)
    runner = {ST: run_sentence_transformers, LL: run_lastlayer, "base": run_base}[spec["system"]]
    if spec.get("profile"):
        measured = profiled(lambda: runner(spec, docs, held_out), spec["warmup"])
    else:
        measured = runner(spec, docs, held_out)
    measured.update({
        "wall_s": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() and not spec["cpu"] else "cpu",
        "torch": torch.__version__,
        "load_1min_end": os.getloadavg()[0],
    })
    measured["peak_rss_mb"] = max(measured.get("load_peak_rss_mb") or 0,
                                  measured.get("cache_peak_rss_mb") or 0,
                                  measured.get("train_peak_rss_mb") or peak_rss_mb())
    return measured


# ---------------------------------------------------------------------------------------
# Rows: raw measurements of a system's runs -> one result row.


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def make_row(spec: dict[str, Any], runs: list[dict[str, Any]], machine: str,
             base_knn: float | None = None) -> dict[str, Any]:
    """One result row from the (repeated) runs of one system/mode."""
    ok = [r for r in runs if "error" not in r]
    per_run = [_median(r["step_times_s"][spec["warmup"]:]) for r in ok]
    per_run = [t for t in per_run if t is not None]
    step = _median(per_run)
    b = spec["batch_size"]
    row: dict[str, Any] = {
        "system": spec["system"],
        "model": spec["model"],
        "mode": spec["mode"],
        "step_s_median": step,
        "pairs_per_s": b / step if step else None,
        "peak_rss_mb": _median([r["peak_rss_mb"] for r in ok]),
        "knn_accuracy": next((r["knn_accuracy"] for r in ok if "knn_accuracy" in r), None),
        "machine": machine,
        "base_knn_accuracy": base_knn,
        "batch_size": b,
        "max_length": spec["max_length"],
        "precision": spec.get("precision", "fp32"),
        "cache_dtype": spec.get("cache_dtype", "float32") if "cached" in spec["mode"] else None,
        "steps": spec["steps"],
        "warmup_steps": spec["warmup"],
        "repeats": len(ok),
        "lr": spec["lr"],
        "step_s_per_repeat": per_run,
        "rss_loaded_mb": _median([r["rss_loaded_mb"] for r in ok if r.get("rss_loaded_mb")]),
        "train_rss_increase_mb": _median([r["train_peak_rss_mb"] - r["rss_loaded_mb"] for r in ok
                                          if r.get("peak_reset") and r.get("rss_loaded_mb")]),
        "trainable_params": ok[0]["trainable_params"] if ok else None,
        "total_params": ok[0]["total_params"] if ok else None,
        "final_loss": ok[0]["losses"][-1] if ok and ok[0]["losses"] else None,
        "loss_last10_mean": statistics.fmean(ok[0]["losses"][-10:])
        if ok and ok[0]["losses"] else None,
        "threads": ok[0]["threads"] if ok else None,
        "device": ok[0]["device"] if ok else None,
    }
    cache_peaks = [r["cache_peak_rss_mb"] for r in ok if "cache_peak_rss_mb" in r]
    if cache_peaks:  # the caching phase's own peak, and the cache's size
        row["cache_peak_rss_mb"] = _median(cache_peaks)
        row["cache_mb"] = ok[0]["cache_mb"]
    caches = [r["cache_s"] for r in ok if "cache_s" in r]
    if caches and step:
        cache = _median(caches)
        total_steps = spec["warmup"] + spec["steps"]
        row.update({
            "cache_s": cache,
            "cache_pairs": ok[0]["cache_pairs"],
            "step_s_amortised": step + cache / total_steps,
            "pairs_per_s_amortised": b / (step + cache / total_steps),
        })
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        row["errors"] = errors
    return row


# ---------------------------------------------------------------------------------------
# The orchestrating process: it never imports torch, so it adds nothing to the workers.


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the rows, with speed and memory ratios against ST full (at its
    fastest precision, when several ran)."""
    refs = [r for r in rows if r["system"] == ST and r["mode"] == "full" and r["step_s_median"]]
    ref = min(refs, key=lambda r: r["step_s_median"], default=None)
    cells = []
    for r in rows:
        step, amort = r["step_s_median"], r.get("step_s_amortised")
        speed = ref["step_s_median"] / step if ref and step else None
        speed_amort = ref["step_s_median"] / amort if ref and amort else None
        mem = r["peak_rss_mb"] / ref["peak_rss_mb"] if ref and r["peak_rss_mb"] else None
        cells.append([r["system"], r["mode"], r.get("precision", "fp32"), tables.fmt(step),
                      tables.fmt(r["pairs_per_s"], ".1f"),
                      tables.times(speed), tables.fmt(amort), tables.times(speed_amort),
                      tables.fmt(r["peak_rss_mb"], ".0f"), tables.times(mem),
                      tables.fmt(r["knn_accuracy"], ".4f")])
    return tables.markdown(
        ["system", "mode", "precision", "step s (median)", "pairs/s", "speed-up vs ST full",
         "amortised step s (incl. caching)", "amortised speed-up", "peak RSS MB",
         "RSS vs ST full", "kNN acc"], cells, align="lllrrrrrrrr")


def write_rows(args, specs, runs, base_knn, load_start):
    """Aggregate the runs so far into rows and write them to ``--out`` (after every run)."""
    machine = machine_description(load_start, os.getloadavg()[0], "/".join(args.precision))
    threads = next((r["threads"] for rs in runs.values() for r in rs if "threads" in r), None)
    if threads:
        machine += f"; torch threads {threads}"
    rows = [make_row(spec, runs[i], machine, base_knn) for i, spec in enumerate(specs)
            if runs[i]]
    for row, i in zip(rows, [i for i in range(len(specs)) if runs[i]], strict=True):
        row["load_1min_per_repeat"] = [r["load_1min_start"] for r in runs[i]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return rows, machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="MiniLM only: ST full fine-tuning vs lastlayer top-2 LoRA and cached "
                        "(length-grouped), no kNN (under 10 minutes on 2 cores)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local folder")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="labelled corpus (text, label)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run (default: 8 quick, 30 otherwise)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per run")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    p.add_argument("--max-length", type=int, default=128, help="tokens per view")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per system, interleaved (default: 3 quick, 3 otherwise)")
    p.add_argument("--top-k", type=int, default=2, help="lastlayer's top-k layers")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate of the LoRA modes")
    p.add_argument("--lr-full", type=float, default=2e-5,
                   help="learning rate of full fine-tuning / unfrozen top-k blocks")
    p.add_argument("--eval-docs", type=int, default=1000,
                   help="held-out labelled documents for kNN (never trained on)")
    p.add_argument("--no-eval", action="store_true", help="skip the kNN quality column")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                   help="training precision(s) of every system: fp32, or bf16 autocast "
                        "(torch.autocast for sentence-transformers, Accelerate's "
                        "mixed_precision=bf16 for lastlayer); several: every system runs "
                        "in each, interleaved, and ratios are taken against "
                        "sentence-transformers' fastest; evaluation stays fp32")
    p.add_argument("--cache-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="train.cache_dtype of the cached modes (bfloat16 halves the cache)")
    p.add_argument("--only", nargs="*", default=None,
                   help="restrict to these modes (e.g. full lora-top2)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing: profile one step of each system (torch.profiler) "
                        "and print where its time goes")
    p.add_argument("--wait-load", type=float, default=None,
                   help="first wait until the 1-min load average is below this")
    p.add_argument("--wait-max", type=float, default=600, help="longest wait, seconds")
    p.add_argument("--worker-timeout", type=float, default=1800)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON file for the rows")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 8 if args.quick else 30
    if args.repeats is None:
        args.repeats = 3
    return args


def specs_for(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One worker spec per (system, mode) of the plan."""
    specs = []
    for precision, (system, mode) in itertools.product(args.precision,
                                                       plan(args.quick, args.top_k)):
        if args.only and mode not in args.only:
            continue
        full_weights = mode == "full" or mode.startswith("full-")
        specs.append({
            "system": system, "mode": mode, "model": args.model, "data": args.data,
            "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
            "max_length": args.max_length, "lr": args.lr_full if full_weights else args.lr,
            "temperature": 0.05, "top_k": args.top_k, "seed": args.seed, "eval": False,
            "precision": precision, "cache_dtype": args.cache_dtype,
            "eval_docs": args.eval_docs, "cpu": args.cpu, "threads": args.threads,
        })
    return specs


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        reply({"model": safetensors_copy(spec["copy"])} if "copy" in spec else measure(spec))
        return []
    if args.quick and args.model != DEFAULT_MODEL:
        print(f"--quick runs {args.model} instead of MiniLM, as asked.")
    evaluate = not (args.quick or args.no_eval)
    load_start = wait_for_quiet(args.wait_load, args.wait_max) if args.wait_load else \
        os.getloadavg()[0]
    copied = run_worker({"copy": args.model}, args.worker_timeout)
    if "error" in copied:
        raise SystemExit(f"{args.model}: {copied['error']}")
    args.model = copied["model"]
    specs = specs_for(args)
    if args.profile:
        for spec in specs:
            result = run_worker({**spec, "steps": 1, "profile": True}, args.worker_timeout)
            print(f"\n## {spec['system']} {spec['mode']}\n")
            if "error" in result:
                print(result["error"])
                continue
            print(result["profile_table"])
            print(f"Saved for the backward at that step: {result['saved_activations_mb']:.0f} MB "
                  f"(largest by shape):\n{result['saved_activations_table']}")
            print(f"Peak RSS {result['peak_rss_mb']:.0f} MB, {result['rss_loaded_mb']:.0f} MB "
                  "once loaded" + (f", {result['cache_peak_rss_mb']:.0f} MB while caching "
                                   f"({result['cache_mb']:.0f} MB of states)"
                                   if "cache_peak_rss_mb" in result else ""))
        return []
    base_knn = None
    if evaluate:
        print("kNN of the untrained model ...", flush=True)
        base = run_worker({**specs[0], "system": "base", "eval": True}, args.worker_timeout)
        base_knn = base.get("knn_accuracy")
        if "error" in base:
            print(base["error"], file=sys.stderr)
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(specs))}
    for repeat in range(args.repeats):
        for i, spec in enumerate(specs):
            spec = {**spec, "eval": evaluate and repeat == 0}
            load = os.getloadavg()[0]
            print(f"[{repeat + 1}/{args.repeats}] {spec['system']} {spec['mode']} "
                  f"{spec['precision']} "
                  f"(1-min load {load:.2f}) ...", flush=True)
            result = run_worker(spec, args.worker_timeout)
            result["load_1min_start"] = load
            if "error" in result:
                print(f"  FAILED: {result['error']}", file=sys.stderr)
            else:
                steps = result["step_times_s"][spec["warmup"]:]
                print(f"  median step {statistics.median(steps):.3f} s, peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB, wall {result['wall_s']:.0f} s", flush=True)
            runs[i].append(result)
            write_rows(args, specs, runs, base_knn, load_start)  # keep what is done so far
    rows, machine = write_rows(args, specs, runs, base_knn, load_start)
    out = Path(args.out)
    print(f"\n{machine}\nbatch {args.batch_size} pairs, max_length {args.max_length}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.repeats} repeats"
          + (f"; base kNN {base_knn:.4f}" if base_knn is not None else "") + "\n")
    print(format_table(rows))
    print(f"\nWrote {out}")
    return rows


if __name__ == "__main__":
    main()
