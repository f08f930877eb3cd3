"""Gain against training budget: held-out quality after ~40, 150 and 500 steps.

The findings (``benchmarks/findings.py``) trained 40 steps x 32 pairs, a fraction of an
epoch. This benchmark asks what more steps buy, on a raw base (SmolLM2-135M, full unfreeze
of the top k, crops, lr 2e-4, batch 32, 64 tokens; the findings' protocol and held-out
documents), with each corpus's k as ``adapter.top_k: auto`` chooses it
(``benchmarks/results/choose_k.json``; the labelled probe picks the same k on these four
corpora). One JSON row per finished run goes to ``benchmarks/results/budget.jsonl``; run
it again and it continues (resumable); ``--report`` prints the table, writes
``benchmarks/results/budget.json`` and plots gain against training time
(``docs/budget_gain.png``).

    python benchmarks/budget.py --data-root ../shared/data      # run (or continue) the plan
    python benchmarks/budget.py --max-minutes 30 --only a b     # priority groups a and b only
    python benchmarks/budget.py --report

How budgets are compared. The learning rate follows a linear warmup (10 %) and linear
decay over ``train.max_steps``, so step 40 of a 500-step run is not a 40-step run: every
budget is its own run, from a fresh copy of the base, with its own schedule.

What a run trains on. Per (data set, seed), ``PAIRS`` = 1,280 crop pairs (the findings'
one pass of 40 x 32) are sampled once and their block-(L-k) input states cached (cost
``cache_s``, paid once and counted in every run's training time); every budget then runs
only the top k blocks over those pairs in seeded epochs (150 steps = 3.75 passes over
them, 500 steps = 12.5). Each run is what ``lastlayer train`` gives for the recipe in its
row (``train.cached_pairs=1280 train.max_steps=N``). "One epoch" is one pass over the
corpus (steps = training documents / 32) where that differs from the three budgets.
Runs with ``pairs`` < 1,280 use the first ``pairs`` of the same sample (the same pairs a
recipe with that ``train.cached_pairs`` caches): the demo's candidates.

Share of the gap closed: (adapted - base) / (all-MiniLM-L6-v2 - base), the MiniLM values
measured by the findings on the same held-out documents.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from findings import (  # noqa: E402  (the findings' protocol, data and caches, shared)
    DATASETS,
    EVAL_SEED,
    MODELS,
    ROOT,
    EvalData,
    _load_views,
    _portable,
    _save_views,
    add_run_arguments,
    commit,
    eval_data,
    machine,
    read_rows,
)

from lastlayer.config import Recipe, load_recipe  # noqa: E402
from lastlayer.core.encoder import Encoder, load_encoder  # noqa: E402
from lastlayer.core.split import encode_from_cache, encode_with_cache  # noqa: E402
from lastlayer.evaluation.metrics import paired_delta  # noqa: E402
from lastlayer.training.cache import CachedViews  # noqa: E402
from lastlayer.training.pairs import CachedPairStream, cached_pair_stream  # noqa: E402
from lastlayer.training.run import fit, prepare  # noqa: E402

log = logging.getLogger("budget")

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "budget.jsonl"
DEFAULT_SUMMARY = ROOT / "benchmarks" / "results" / "budget.json"
DEFAULT_PLOT = ROOT / "docs" / "budget_gain.png"
DEFAULT_WORK = ROOT / "runs" / "budget"
DEFAULT_K_FILE = ROOT / "benchmarks" / "results" / "choose_k.json"
MODEL = "smollm2"
BATCH, LR, PAIRS = 32, 2e-4, 1280
BUDGETS = (40, 150, 500)
# The chosen k for medical abstracts (probe and auto agree); the others come from --k-file.
KNOWN_K = {"medical_abstracts": 7}
CORPORA = ("medical_abstracts", "ohsumed23", "reuters_r8", "scifact")
SHORT = {"medical_abstracts": "medical", "ohsumed23": "Ohsumed", "reuters_r8": "R8",
         "scifact": "SciFact", "mr_movie_reviews": "MR"}


@dataclass(frozen=True)
class Run:
    """One training run; ``key`` identifies it in the results file."""

    dataset: str
    k: int
    steps: int
    seed: int = 42
    pairs: int = PAIRS
    lr: float = LR
    batch_size: int = BATCH

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def plan(ks: dict[str, int], epochs: dict[str, int] | None = None) -> list[tuple[str, Run]]:
    """(priority group, run), most wanted first; corpora without a known k are left out.

    a: medical 40 and 150 steps, seed 42 (and the demo's candidate: 40 steps over 640
    pairs); b: 40 steps on every other corpus, then 150; c: second seeds of those points
    (and of the demo's); d: one epoch (where it is not already one of the budgets) and 500
    steps; e: the rest.
    """
    epochs = epochs or {}
    med = "medical_abstracts"
    out: list[tuple[str, Run]] = []

    def add(group: str, dataset: str, steps: int, seed: int = 42, pairs: int = PAIRS) -> None:
        if dataset in ks:
            out.append((group, Run(dataset, ks[dataset], steps, seed, pairs)))

    add("a", med, 40, pairs=640)
    for steps in BUDGETS[:2]:
        add("a", med, steps)
    for steps in BUDGETS[:2]:
        for d in CORPORA[1:]:
            add("b", d, steps)
    add("c", med, 40, 43, pairs=640)  # the demo's budget
    for d in CORPORA:
        for steps in BUDGETS[:2]:
            add("c", d, steps, 43)
    for d in CORPORA:
        if d in epochs and not any(abs(epochs[d] - b) <= 0.15 * b for b in BUDGETS):
            add("d", d, epochs[d])
    for d in (CORPORA[1], CORPORA[0], *CORPORA[2:]):
        add("d", d, BUDGETS[2])
    for d in CORPORA:
        add("e", d, BUDGETS[2], 43)
    seen: set[Run] = set()
    return [(g, r) for g, r in out if not (r in seen or seen.add(r))]


def read_ks(path: Path) -> dict[str, int]:
    """The k that ``adapter.top_k: auto`` picks per data set, from ``benchmarks/choose_k.py``'s
    results (``{name: {"auto": {"k": k}, ...}}``); a plain ``{name: k}`` file also works."""
    ks = dict(KNOWN_K)
    if path.exists():
        for name, value in json.loads(path.read_text(encoding="utf-8")).items():
            if isinstance(value, dict):
                value = value.get("auto", value).get("k")
            if isinstance(value, int):
                ks[name] = value
    return ks


def recipe_of(run: Run, data_root: Path) -> Recipe:
    """The recipe whose ``lastlayer train`` gives this row (same documents, pairs, steps)."""
    spec = MODELS[MODEL]
    path = data_root / DATASETS[run.dataset]
    evaluation = [] if path.is_dir() else [f"eval.data={_portable(path)}", "eval.max_docs=1000"]
    return load_recipe(None, [
        f"model.name_or_path={spec.name_or_path}", f"model.max_length={spec.max_length}",
        "adapter.kind=full", f"adapter.top_k={run.k}", "objective.kind=crop",
        f"data.train={_portable(path)}", *evaluation, f"train.max_steps={run.steps}",
        f"train.batch_size={run.batch_size}", f"train.lr={run.lr}",
        f"train.cached_pairs={run.pairs}", f"seed={run.seed}", "train.routing_docs=0",
        f"output_dir=runs/budget/{run.dataset}/k{run.k}-{run.steps}steps-seed{run.seed}",
    ])


def first_pairs(views: CachedViews, n: int) -> CachedViews:
    """The first ``n`` cached views (what a smaller ``train.cached_pairs`` would cache)."""
    end = int(views.offsets[n])
    return CachedViews(views.ids[:end], views.states[:end], views.offsets[: n + 1])


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Group:
    """One data set at one k: the base measured once (keeping block L-k's inputs of the
    held-out texts), then runs from a fresh copy of the base each."""

    def __init__(self, dataset: str, k: int, data_root: Path, work: Path) -> None:
        self.dataset, self.k, self.data_root = dataset, k, data_root
        self.work = work / dataset / f"k{k}"
        self.work.mkdir(parents=True, exist_ok=True)
        self.data: EvalData = eval_data(dataset, data_root)
        probe = Run(dataset, k, BUDGETS[0])
        self.encoder: Encoder = load_encoder(recipe_of(probe, data_root).model)
        self.base_model = self.encoder.model
        self.base, self.base_correct, self.eval_cache = self._base()

    def _base(self) -> tuple[float, list[bool] | None, list[torch.Tensor]]:
        path = self.work / "base.pt"
        if path.exists():
            saved = torch.load(path, mmap=True)
            return saved["value"], saved["correct"], saved["cache"]
        vectors, cache = encode_with_cache(self.encoder, self.data.texts, self.k, 32,
                                           f"embed {self.dataset} (base)")
        value, correct = self.data.score(vectors)
        torch.save({"value": value, "correct": correct, "cache": cache}, path)
        return value, correct, cache

    def pairs(self, run: Run) -> tuple[CachedPairStream, float]:
        """The run's cached pairs and what caching them cost (seconds; built once per seed,
        the cost of a smaller prefix counted pro rata)."""
        path = self.work / f"pairs-seed{run.seed}-{PAIRS}.pt"
        meta = path.with_suffix(".json")
        if not path.exists():
            self.encoder.model = self.base_model
            start = time.perf_counter()
            full = Run(run.dataset, run.k, run.steps, run.seed, PAIRS)
            stream = cached_pair_stream(self.encoder, self.data.train_docs,
                                        recipe_of(full, self.data_root), PAIRS, BATCH)
            _save_views(path, stream)
            meta.write_text(json.dumps({"cache_s": round(time.perf_counter() - start, 1),
                                        "load": os.getloadavg()}), encoding="utf-8")
        cache_s = json.loads(meta.read_text(encoding="utf-8"))["cache_s"]
        full = Run(run.dataset, run.k, run.steps, run.seed, PAIRS)
        stream = _load_views(path, full)
        if run.pairs < PAIRS:
            a = first_pairs(stream.views_a, run.pairs)
            b = first_pairs(stream.views_b, run.pairs)
            stream = CachedPairStream(a, b, run.steps * run.batch_size, run.seed, stream.stats,
                                      stream.k)
        else:
            stream = CachedPairStream(stream.views_a, stream.views_b, run.steps * run.batch_size,
                                      run.seed, stream.stats, stream.k)
        return stream, cache_s * run.pairs / PAIRS

    def train(self, run: Run, group: str) -> dict[str, Any]:
        """Train one run from a fresh copy of the base and score it; return its row."""
        recipe = recipe_of(run, self.data_root)
        pairs, cache_s = self.pairs(run)
        self.encoder.model = copy.deepcopy(self.base_model)
        job = prepare(recipe, encoder=self.encoder, documents=self.data.train_docs,
                      evaluate=False)
        job.pairs = pairs
        load_before, cpu_before = os.getloadavg(), cpu_seconds()
        start = time.perf_counter()
        result = fit(job)
        train_s = time.perf_counter() - start
        train_cpu = cpu_seconds() - cpu_before
        load_after = os.getloadavg()
        vectors = encode_from_cache(self.encoder, self.data.texts, self.eval_cache, self.k, 32,
                                    "embed (adapted, from cache)")
        value, correct = self.data.score(vectors)
        eval_s = time.perf_counter() - start - train_s
        self.encoder.model = self.base_model
        row = {**asdict(run), "key": run.key, "group": group, "metric": self.data.metric,
               "value": value, "base_value": self.base, "delta": value - self.base}
        if correct is not None:
            ci = paired_delta(np.asarray(self.base_correct), np.asarray(correct), seed=EVAL_SEED)
            row.update(ci95_low=ci["ci95_low"], ci95_high=ci["ci95_high"])
        row.update(
            train_documents=len(self.data.train_docs),
            epochs_over_corpus=round(run.steps * run.batch_size / len(self.data.train_docs), 2),
            passes_over_pairs=round(run.steps * run.batch_size / run.pairs, 2),
            first_loss=result.history[0]["loss"], final_loss=result.history[-1]["loss"],
            final_accuracy=result.history[-1]["accuracy"],
            cache_s=round(cache_s, 1), train_s=round(train_s, 1),
            time_s=round(cache_s + train_s, 1), s_per_step=round(train_s / run.steps, 2),
            train_cpu_s=round(train_cpu, 1), eval_s=round(eval_s, 1),
            load_before=[round(x, 2) for x in load_before],
            load_after=[round(x, 2) for x in load_after],
            eval_documents=len(self.data.texts), machine=machine(), commit=commit(),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        return row


# ---------------------------------------------------------------------------------------
# Running the plan.


def pending(runs: list[tuple[str, Run]], done: set[str]
            ) -> Iterator[tuple[tuple[str, int], list[tuple[str, Run]]]]:
    todo = [(g, r) for g, r in runs if r.key not in done]
    yield from ((key, list(rs)) for key, rs in groupby(todo, lambda gr: (gr[1].dataset, gr[1].k)))


def execute(runs: list[tuple[str, Run]], out: Path, data_root: Path, work: Path,
            max_minutes: float | None = None) -> int:
    """Run what is not done yet, appending a row per run; return how many ran."""
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else None
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    for (dataset, k), todo in pending(runs, {r["key"] for r in read_rows(out)}):
        if deadline and time.monotonic() > deadline:
            break
        group = Group(dataset, k, data_root, work)
        for name, run in todo:
            if deadline and time.monotonic() > deadline:
                print(f"Stopped at the {max_minutes}-minute limit; run again to continue.")
                return count
            row = group.train(run, name)
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            count += 1
            print(f"[{count}] ({name}) {dataset} k={k} {run.steps} steps, {run.pairs} pairs, "
                  f"seed {run.seed}: {row['metric']} {row['base_value']:.4f} -> "
                  f"{row['value']:.4f} ({row['delta']:+.4f}) in {row['time_s']:.0f} s "
                  f"({row['s_per_step']:.1f} s/step)", flush=True)
    return count


# ---------------------------------------------------------------------------------------
# The report.


def minilm_base(findings: Path) -> dict[str, float]:
    """all-MiniLM-L6-v2's value per data set on the same held-out documents (findings)."""
    return {r["dataset"]: r["base_value"] for r in read_rows(findings) if r["model"] == "minilm"}


def summarise(rows: list[dict[str, Any]], minilm: dict[str, float]) -> list[dict[str, Any]]:
    """One entry per (data set, k, steps, pairs): mean gain over seeds, spread, time, gap."""
    points = []
    key = lambda r: (r["dataset"], r["k"], r["pairs"], r["steps"])  # noqa: E731
    order = {d: i for i, d in enumerate(CORPORA)}
    # Caching 1,280 pairs costs the same for every seed: the quietest measurement per corpus
    # and k stands for all (the first medical cache was made at load ~10, 11x slower).
    cache: dict[tuple[str, int], float] = {}
    for r in rows:
        full = r["cache_s"] * PAIRS / r["pairs"]
        cache[(r["dataset"], r["k"])] = min(cache.get((r["dataset"], r["k"]), full), full)
    for (dataset, k, pairs, steps), group in groupby(
            sorted(rows, key=lambda r: (order.get(r["dataset"], 9), *key(r)[1:])), key):
        group = sorted(group, key=lambda r: r["seed"])
        fastest = min(group, key=lambda r: r["train_s"])
        deltas = [r["delta"] for r in group]
        base = group[0]["base_value"]
        point = {
            "dataset": dataset, "metric": group[0]["metric"], "k": k, "pairs": pairs,
            "steps": steps, "epochs_over_corpus": group[0]["epochs_over_corpus"],
            "seeds": [r["seed"] for r in group], "base": base,
            "delta_mean": statistics.mean(deltas),
            "delta_half_range": (max(deltas) - min(deltas)) / 2,
            "deltas": deltas,
            "time_s_mean": statistics.mean(r["time_s"] for r in group),
            # the quietest time: fastest seed's steps + the quietest caching of these pairs
            "time_s_min": cache[(dataset, k)] * pairs / PAIRS + fastest["train_s"],
            "load_of_min": max(fastest["load_before"][0], fastest["load_after"][0]),
            "train_s_mean": statistics.mean(r["train_s"] for r in group),
            "train_cpu_s_mean": statistics.mean(r["train_cpu_s"] for r in group),
            # 1-minute load average before and after the steps (2 cores; > 2 = shared)
            "load": [x for r in group for x in (r["load_before"][0], r["load_after"][0])],
        }
        first = group[0]
        if "ci95_low" in first:
            point["ci_first_seed"] = [first["ci95_low"], first["ci95_high"]]
        if dataset in minilm and minilm[dataset] != base:
            point["minilm"] = minilm[dataset]
            point["gap_closed"] = point["delta_mean"] / (minilm[dataset] - base)
        points.append(point)
    return points


def table(points: list[dict[str, Any]]) -> str:
    lines = ["| data set (k) | steps × 32 over cached pairs | epochs | base | "
             "Δ (mean ± half-range, n) | Δ seed 42 (95% CI) | gap to MiniLM closed | "
             "time (quietest caching + fastest steps) |", "|---|---|---|---|---|---|---|---|"]
    for p in points:
        n = len(p["seeds"])
        spread = f" ± {100 * p['delta_half_range']:.1f} (n={n})" if n > 1 else " (n=1)"
        ci = p.get("ci_first_seed")
        first = p["deltas"][0]
        ci_text = f"{100 * first:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else \
            f"{100 * first:+.1f}"
        loaded = f" (load {p['load_of_min']:.0f})" if p["load_of_min"] > 3 else ""
        gap = p.get("gap_closed")
        gap_text = "–" if gap is None else \
            f"{gap:.0%} (MiniLM {p['minilm']:.3f})"
        lines.append(
            f"| {SHORT.get(p['dataset'], p['dataset'])} (top-{p['k']}) | "
            f"{p['steps']} over {p['pairs']:,} | "
            f"{p['epochs_over_corpus']:.2f} | {p['base']:.3f} | "
            f"{100 * p['delta_mean']:+.1f}{spread} | {ci_text} | {gap_text} | "
            f"{p['time_s_min'] / 60:.1f} min{loaded} |")
    return "\n".join(lines)


def reference(findings: Path) -> list[dict[str, Any]]:
    """The findings' 40-step SmolLM2 crop runs (full unfreeze, seed 42): top-4 from cached
    pairs on every corpus, top-7 on fresh views on medical; drawn as hollow markers."""
    out = []
    for r in read_rows(findings):
        if (r["model"], r["objective"], r["kind"], r["seed"]) != (MODEL, "crop", "full", 42):
            continue
        if (r["k"] == 4 and r["cached"]) or (r["k"] == 7 and not r["cached"]):
            out.append({"dataset": r["dataset"], "k": r["k"], "delta": r["delta"],
                        "time_s": r["cache_s"] + r["train_s"], "cached": r["cached"]})
    return out


def plot(points: list[dict[str, Any]], path: Path,
         findings: list[dict[str, Any]] | None = None) -> Path:
    """Gain (points) against training time (minutes, cache + steps), one line per corpus;
    the demo's candidates as stars, the findings' 40-step runs as hollow markers."""
    from lastlayer.extras import require

    matplotlib = require("matplotlib", "plot", "benchmarks/budget.py --report")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["#3d5a80", "#d1495b", "#2a9d8f", "#edae49", "#6c757d"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130, layout="constrained")
    main = [p for p in points if p["pairs"] == PAIRS]
    datasets = [d for d in CORPORA if d in {p["dataset"] for p in points + (findings or [])}]
    color_of = dict(zip(datasets, colors, strict=False))
    for r in findings or []:
        if r["dataset"] in color_of:
            ax.plot(r["time_s"] / 60, 100 * r["delta"], ls="none", ms=7, mfc="none", mew=1.5,
                    marker="s" if r["cached"] else "D", color=color_of[r["dataset"]])
    if findings:
        for marker, text in (("s", "findings: top-4, 40 steps, 1,280 cached pairs"),
                             ("D", "findings: top-7, 40 steps, fresh views")):
            ax.plot([], [], ls="none", marker=marker, mfc="none", color="#555555", label=text)
    for dataset in datasets:  # a legend entry for each corpus without a budget line yet
        if dataset not in {p["dataset"] for p in main}:
            ax.plot([], [], color=color_of[dataset], lw=6, label=SHORT.get(dataset, dataset))
    for dataset in dict.fromkeys(p["dataset"] for p in main):
        color = color_of[dataset]
        mine = sorted((p for p in main if p["dataset"] == dataset), key=lambda p: p["steps"])
        x = [p["time_s_min"] / 60 for p in mine]
        y = [100 * p["delta_mean"] for p in mine]
        err = [100 * p["delta_half_range"] for p in mine]
        unit = "nDCG@10" if mine[0]["metric"] == "ndcg@10" else "kNN"
        ax.errorbar(x, y, yerr=err, fmt="o-", color=color, lw=2, ms=5, capsize=3,
                    label=f"{SHORT.get(dataset, dataset)} (top-{mine[0]['k']}, {unit})")
        for p, xi, yi in zip(mine, x, y, strict=True):
            ax.annotate(f"{p['steps']}", (xi, yi), xytext=(4, -10), textcoords="offset points",
                        fontsize=7, color=color)
    for p in (p for p in points if p["pairs"] != PAIRS):  # the demo's candidates
        ax.plot(p["time_s_min"] / 60, 100 * p["delta_mean"], marker="*", ms=13, ls="none",
                color=color_of[p["dataset"]], label=f"{SHORT.get(p['dataset'], p['dataset'])}, "
                f"{p['steps']} steps over {p['pairs']} pairs (the demo's budget)")
    ax.axhline(0, color="#999999", ls=":", lw=1)
    ax.set_xlabel("training time, 2 CPU cores (min: quietest caching of the pairs + "
                  "fastest seed's steps)")
    ax.set_ylabel("held-out gain over the base (kNN points; SciFact: nDCG@10)")
    ax.set_title("SmolLM2-135M, full unfreeze of the auto-chosen top-k, crops, batch 32\n"
                 "(labels: optimizer steps; bars: half-range over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def report(out: Path, summary: Path, picture: Path, findings: Path) -> None:
    rows = read_rows(out)
    points = summarise(rows, minilm_base(findings))
    summary.write_text(json.dumps({"pairs": PAIRS, "lr": LR, "batch_size": BATCH,
                                   "points": points}, indent=1) + "\n", encoding="utf-8")
    print(table(points))
    if points:
        print("\nplot:", plot(points, picture, reference(findings)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, DEFAULT_OUT, DEFAULT_WORK)
    parser.add_argument("--k-file", type=Path, default=DEFAULT_K_FILE,
                        help="choose_k.py's results (default benchmarks/results/choose_k.json): "
                             "the auto-chosen k per data set")
    parser.add_argument("--only", nargs="+", default=None, metavar="GROUP",
                        help="priority groups to run (a b c d e; default all)")
    parser.add_argument("--corpora", nargs="+", default=None, metavar="NAME",
                        help=f"only these data sets ({', '.join(CORPORA)})")
    parser.add_argument("--steps", nargs="+", type=int, default=None, metavar="N",
                        help="only runs of these step counts")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new run after this long")
    parser.add_argument("--report", action="store_true", help="table + plot, then exit")
    parser.add_argument("--findings", type=Path,
                        default=ROOT / "benchmarks" / "results" / "findings.jsonl")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        report(args.out, DEFAULT_SUMMARY, DEFAULT_PLOT, args.findings)
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ks = read_ks(args.k_file)
    epochs = {}
    for dataset in ks:
        if dataset in CORPORA:
            n = len(eval_data(dataset, args.data_root).train_docs)
            epochs[dataset] = max(1, round(n / BATCH))
    runs = [(g, r) for g, r in plan(ks, epochs)
            if (args.only is None or g in args.only)
            and (args.corpora is None or r.dataset in args.corpora)
            and (args.steps is None or r.steps in args.steps)]
    print("k per data set:", ks, "; one epoch (steps):", epochs, flush=True)
    done = execute(runs, args.out, args.data_root, args.work, args.max_minutes)
    finished = {x["key"] for x in read_rows(args.out)}
    left = [(g, r) for g, r in runs if r.key not in finished]
    print(f"{done} run(s) this time; {len(left)} of {len(runs)} left.")


if __name__ == "__main__":
    sys.exit(main())
