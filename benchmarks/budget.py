"""Gain against training budget: held-out quality after ~40, 150 and 500 steps.

(~410 lines: the plan, the runner and the report of one benchmark; the shared parts are
in ``benchmarks.bench``.)

The findings (``benchmarks.findings``) trained 40 steps x 32 pairs, a fraction of an
epoch. This benchmark asks what more steps buy, on a raw base (SmolLM2-135M, full unfreeze
of the top k, crops, lr 2e-4, batch 32, 64 tokens; the findings' protocol and held-out
documents), with each corpus's k as ``adapter.top_k: auto`` chooses it
(``benchmarks/results/choose_k.json``; the labelled probe picks the same k on these four
corpora). One JSON row per finished run goes to ``benchmarks/results/budget.jsonl``; run
it again and it continues (resumable); ``--report`` prints the table, writes
``benchmarks/results/budget.json`` and plots gain against training time
(``docs/budget_gain.png``).

    python -m benchmarks.budget --data-root ../shared/data      # run (or continue) the plan
    python -m benchmarks.budget --max-minutes 30 --only a b     # priority groups a and b only
    python -m benchmarks.budget --report

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
import json
import logging
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from benchmarks.bench import RESULTS, ROOT, protocol, tables
from benchmarks.bench.results import read_rows, write_json
from benchmarks.bench.runs import Group, Keyed, add_run_arguments, load_views, provenance, scores
from benchmarks.bench.runs import execute as execute_plan
from lastlayer.config import Recipe

DEFAULT_OUT = RESULTS / "budget.jsonl"
DEFAULT_SUMMARY = RESULTS / "budget.json"
DEFAULT_PLOT = ROOT / "docs" / "budget_gain.png"
DEFAULT_WORK = ROOT / "runs" / "budget"
DEFAULT_K_FILE = RESULTS / "choose_k.json"
MODEL = "smollm2"
BATCH, LR, PAIRS = 32, 2e-4, 1280
BUDGETS = (40, 150, 500)
# The chosen k for medical abstracts (probe and auto agree); the others come from --k-file.
KNOWN_K = {"medical_abstracts": 7}
CORPORA = ("medical_abstracts", "ohsumed23", "reuters_r8", "scifact")
SHORT = {"medical_abstracts": "medical", "ohsumed23": "Ohsumed", "reuters_r8": "R8",
         "scifact": "SciFact", "mr_movie_reviews": "MR"}


@dataclass(frozen=True)
class Run(Keyed):
    """One training run; ``key`` identifies it in the results file."""

    dataset: str
    k: int
    steps: int
    seed: int = 42
    pairs: int = PAIRS
    lr: float = LR
    batch_size: int = BATCH


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
    """The k that ``adapter.top_k: auto`` picks per data set, from ``benchmarks.choose_k``'s
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
    return protocol.recipe(
        protocol.MODELS[MODEL], data_root / protocol.DATASETS[run.dataset], kind="full",
        k=run.k, objective="crop", steps=run.steps, batch_size=run.batch_size, lr=run.lr,
        cached_pairs=run.pairs, seed=run.seed, extra=("train.routing_docs=0",),
        output_dir=f"runs/budget/{run.dataset}/k{run.k}-{run.steps}steps-seed{run.seed}")


# ---------------------------------------------------------------------------------------
# Running the plan: one group per (data set, k).


def open_group(dataset: str, k: int, data_root: Path, work: Path) -> Group:
    """One data set at one k: the base measured once (keeping block L-k's inputs of the
    held-out texts), then runs from a fresh copy of the base each."""
    cfg = recipe_of(Run(dataset, k, BUDGETS[0]), data_root).model
    return Group(work / dataset / f"k{k}", dataset, protocol.eval_data(dataset, data_root),
                 cfg, k)


def pairs_of(group: Group, run: Run, data_root: Path):
    """The run's cached pairs and what caching them cost (seconds; built once per seed,
    the cost of a smaller prefix counted pro rata)."""
    path = group.work / f"pairs-seed{run.seed}-{PAIRS}.pt"
    meta = path.with_suffix(".json")
    full = Run(run.dataset, run.k, run.steps, run.seed, PAIRS)
    built = group.cache_pairs(path, recipe_of(full, data_root), PAIRS, BATCH)
    if built is not None:
        meta.write_text(json.dumps({"cache_s": round(built, 1), "load": os.getloadavg()}),
                        encoding="utf-8")
    cache_s = json.loads(meta.read_text(encoding="utf-8"))["cache_s"]
    stream = load_views(path, run.steps * run.batch_size, run.seed,
                        first=run.pairs if run.pairs < PAIRS else None)
    return stream, cache_s * run.pairs / PAIRS


def train_run(group: Group, run: Run, name: str, data_root: Path) -> dict[str, Any]:
    """Train one run from a fresh copy of the base and score it; return its row."""
    recipe = recipe_of(run, data_root)
    pairs, cache_s = pairs_of(group, run, data_root)
    trained = group.train(recipe, pairs)
    history = trained.result.history
    docs = len(group.data.train_docs)
    return {
        **asdict(run), "key": run.key, "group": name, **scores(group, trained),
        "train_documents": docs,
        "epochs_over_corpus": round(run.steps * run.batch_size / docs, 2),
        "passes_over_pairs": round(run.steps * run.batch_size / run.pairs, 2),
        "first_loss": history[0]["loss"], "final_loss": history[-1]["loss"],
        "final_accuracy": history[-1]["accuracy"],
        "cache_s": round(cache_s, 1), "train_s": round(trained.train_s, 1),
        "time_s": round(cache_s + trained.train_s, 1),
        "s_per_step": round(trained.train_s / run.steps, 2),
        "train_cpu_s": round(trained.train_cpu_s, 1), "eval_s": round(trained.eval_s, 1),
        "load_before": [round(x, 2) for x in trained.load_before],
        "load_after": [round(x, 2) for x in trained.load_after],
        "eval_documents": len(group.data.texts), **provenance(),
    }


def execute(runs: list[tuple[str, Run]], out: Path, data_root: Path, work: Path,
            max_minutes: float | None = None) -> int:
    """Run what is not done yet, appending a row per run; return how many ran."""
    def say(count: int, item: tuple[str, Run], row: dict[str, Any]) -> str:
        name, run = item
        return (f"[{count}] ({name}) {run.dataset} k={run.k} {run.steps} steps, {run.pairs} "
                f"pairs, seed {run.seed}: {row['metric']} {row['base_value']:.4f} -> "
                f"{row['value']:.4f} ({row['delta']:+.4f}) in {row['time_s']:.0f} s "
                f"({row['s_per_step']:.1f} s/step)")

    return execute_plan(
        runs, out, key=lambda item: item[1].key, group=lambda item: (item[1].dataset, item[1].k),
        open_group=lambda g: open_group(*g, data_root, work),
        train=lambda group, item: train_run(group, item[1], item[0], data_root), say=say,
        max_minutes=max_minutes)


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
    """The budget table of docs/results.md: one row per point of :func:`summarise`."""
    lines = []
    for p in points:
        n = len(p["seeds"])
        spread = f" ± {100 * p['delta_half_range']:.1f} (n={n})" if n > 1 else " (n=1)"
        ci = p.get("ci_first_seed")
        first = p["deltas"][0]
        ci_text = f"{100 * first:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else \
            f"{100 * first:+.1f}"
        loaded = f" (load {p['load_of_min']:.0f})" if p["load_of_min"] > 3 else ""
        gap = p.get("gap_closed")
        gap_text = "–" if gap is None else f"{gap:.0%} (MiniLM {p['minilm']:.3f})"
        lines.append([f"{SHORT.get(p['dataset'], p['dataset'])} (top-{p['k']})",
                      f"{p['steps']} over {p['pairs']:,}", f"{p['epochs_over_corpus']:.2f}",
                      f"{p['base']:.3f}", f"{100 * p['delta_mean']:+.1f}{spread}", ci_text,
                      gap_text, f"{p['time_s_min'] / 60:.1f} min{loaded}"])
    return tables.markdown(["data set (k)", "steps × 32 over cached pairs", "epochs", "base",
                            "Δ (mean ± half-range, n)", "Δ seed 42 (95% CI)",
                            "gap to MiniLM closed", "time (quietest caching + fastest steps)"],
                           lines)


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

    matplotlib = require("matplotlib", "plot", "python -m benchmarks.budget --report")
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
    write_json(summary, {"pairs": PAIRS, "lr": LR, "batch_size": BATCH, "points": points})
    print(table(points))
    if points:
        print("\nplot:", plot(points, picture, reference(findings)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.budget",
                                     description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, DEFAULT_OUT, DEFAULT_WORK)
    parser.add_argument("--k-file", type=Path, default=DEFAULT_K_FILE,
                        help="benchmarks.choose_k's results (default "
                             "benchmarks/results/choose_k.json): the auto-chosen k per data set")
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
                        default=RESULTS / "findings.jsonl")
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
            n = len(protocol.eval_data(dataset, args.data_root).train_docs)
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
