"""Which top-k? The labelled layer probe against the label-free crop signal, on five corpora.

``adapter.top_k: auto`` chooses k before training from the base model and the training
documents alone (``lastlayer.training.choose_k``). This benchmark checks that choice
against the labelled layer probe (``lastlayer.evaluation.probe``) on the five shared data
sets, and, where the two picks differ, trains both ks to see what each choice gains.

    python -m benchmarks.choose_k probe      # labelled probe curves and k -> probe_k.json
    python -m benchmarks.choose_k auto       # label-free curves and k     -> auto_k.json
    python -m benchmarks.choose_k train      # gains of the ks that differ (resumable)
    python -m benchmarks.choose_k report     # the agreement table (markdown)
    python -m benchmarks.choose_k precision  # the label-free k in fp32 and in bf16 autocast

``precision`` measures the label-free signal twice in one run, float32 and under the bf16
autocast that a ``train.mixed_precision: bf16`` run (``auto`` on a CPU with AMX or
AVX512-BF16) chooses k in: the same crops, the same rule; the two ks, the largest
difference between the curves, and the seconds of each pass (float32 first, so bf16's
first batches pay oneDNN's kernel compilation).

Every stage is resumable: results go to ``benchmarks/results/choose_k.json`` (one entry
per data set and stage), and a stage skips the data sets it already has.

Protocol (as ``benchmarks.findings``): SmolLM2-135M-Instruct (packaged GGUF copy),
max_length 64, mean pooling. Labelled probe: leave-one-out kNN (k=10, euclidean) of every
layer over the 1,000 held-out documents (seed 42) that findings evaluates on; SciFact has
no labels, so its "probe" is nDCG@10 of every layer (300 test queries against the
1,000-document corpus sample), with the same rule (standard error taken over the 300
queries as if binomial: an approximation). Label-free signal: computed on training
documents only (the held-out ones removed, as ``lastlayer train`` removes them).
Training: 40 steps x 32 pairs, full unfreeze, lr 2e-4, crops, seed 42, cached bottom
layers (exact for crops on SmolLM2); rows that ``findings.jsonl`` (or, for a k the findings
never trained, ``budget.jsonl``'s 40-step run over the same 1,280 pairs) already has are
reused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import findings
from benchmarks.bench import DATA_ROOT, RESULTS, ROOT, protocol, tables
from benchmarks.bench.measure import cpu_description
from benchmarks.bench.models import load_base
from benchmarks.bench.protocol import BATCH, EVAL_SEED, STEPS, EvalData
from benchmarks.bench.results import read_json, read_rows, write_json
from lastlayer.evaluation.metrics import knn_accuracy
from lastlayer.evaluation.probe import layer_embeddings, recommend_top_k

log = logging.getLogger("choose_k")

DEFAULT_OUT = RESULTS / "choose_k.json"
MODEL = "smollm2"
DATASETS = list(protocol.DATASETS)


def read(out: Path) -> dict[str, Any]:
    """The results so far: ``{data set: {stage: ...}}``."""
    return read_json(out, {})


def write(out: Path, results: dict[str, Any]) -> None:
    """Rewrite the results file whole (atomically: stages are resumable)."""
    write_json(out, results)


def encoder_for(dataset: str, data_root: Path):
    """The base encoder with the findings settings (max_length 64, mean pooling)."""
    recipe = findings.recipe_of(findings.run_for(MODEL, dataset, "crop"), data_root)
    return recipe, load_base(recipe.model)


def probe_curve(encoder, data: EvalData) -> tuple[list[float], int, str]:
    """Per-layer quality of the base on the held-out documents: (curve, N, measure)."""
    if data.labels is not None:
        layers = layer_embeddings(encoder, data.texts, 32, desc="probe")
        curve = [knn_accuracy(x, data.labels, 10, "euclidean").accuracy for x in layers]
        return curve, len(data.texts), "knn_accuracy (k=10, euclidean, leave-one-out)"
    n = len(data.task.docs)
    layers = layer_embeddings(encoder, data.texts, 32, desc="probe (nDCG)")
    curve = [data.task.score(x[:n], x[n:])["ndcg@10"] for x in layers]
    return curve, len(data.task.queries), "ndcg@10 (queries as the N of the standard error)"


def run_stage(args: argparse.Namespace, stage: str,
              measure: Callable[[Any, str, EvalData], tuple[dict[str, Any], str]]) -> None:
    """``measure(encoder, data set, data) -> (entry, line)`` on every data set that lacks
    ``stage``; each entry is written (and exported) as soon as it is measured, so a stopped
    stage resumes where it stopped. The base is loaded only if something is left to do."""
    results = read(args.out)
    encoder = None
    for dataset in args.datasets:
        if stage in results.get(dataset, {}):
            continue
        data = protocol.eval_data(dataset, args.data_root)
        if encoder is None:
            _, encoder = encoder_for(dataset, args.data_root)
        entry, line = measure(encoder, dataset, data)
        results = read(args.out)
        results.setdefault(dataset, {})[stage] = entry
        write(args.out, results)
        export(args.out, stage, args.export_dir)
        print(line, flush=True)


def stage_probe(args: argparse.Namespace) -> None:
    """The labelled layer probe on the held-out documents."""
    def measure(encoder, dataset: str, data: EvalData) -> tuple[dict[str, Any], str]:
        start = time.perf_counter()
        curve, n, what = probe_curve(encoder, data)
        k, p = recommend_top_k(curve, n)
        entry = {"k": k, "p": p, "best_layer": int(np.argmax(curve)), "curve": curve,
                 "n_docs": n, "measure": what, "seconds": round(time.perf_counter() - start, 1)}
        return entry, (f"{dataset}: probe k={k} (p={p}, best layer {int(np.argmax(curve))}) "
                       f"{[round(c, 3) for c in curve]}")

    run_stage(args, "probe", measure)


def candidate_curves(layers: np.ndarray, n: int, batch: int) -> dict[str, list[float]]:
    """Label-free scores per layer from the crop pairs' embeddings (rows i and n+i pair up):
    the shipped one (in-batch top-1) and the alternatives that were tried against it."""
    from lastlayer.training.choose_k import pair_retrieval

    def centred(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(0, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def align_uniform(x: np.ndarray) -> float:  # Wang & Isola; higher is better here
        a, b = x[:n], x[n:]
        align = float(((a - b) ** 2).sum(1).mean())
        sq = np.clip(2 - 2 * (x @ x.T), 0, None)  # unit vectors: |u - v|^2 = 2 - 2 u.v
        iu = np.triu_indices(len(x), 1)
        uniform = float(np.log(np.exp(-2 * sq[iu]).mean()))
        return -(align + uniform)

    out: dict[str, list[float]] = {"inbatch": [], "all": [], "inbatch_centred": [],
                                   "all_centred": [], "align_uniform": []}
    for x in layers:
        c = centred(x)
        out["inbatch"].append(pair_retrieval(x[:n], x[n:], batch))
        out["all"].append(pair_retrieval(x[:n], x[n:], n))
        out["inbatch_centred"].append(pair_retrieval(c[:n], c[n:], batch))
        out["all_centred"].append(pair_retrieval(c[:n], c[n:], n))
        out["align_uniform"].append(align_uniform(x))
    return out


def stage_auto(args: argparse.Namespace) -> None:
    """The label-free crop signal on training documents only (held-out ones removed)."""
    from lastlayer.config import ObjectiveConfig
    from lastlayer.training.choose_k import crop_pairs, crop_queries

    def measure(encoder, dataset: str, data: EvalData) -> tuple[dict[str, Any], str]:
        start = time.perf_counter()
        a, b = crop_pairs(data.train_docs, ObjectiveConfig(), EVAL_SEED, args.docs)
        layers = layer_embeddings(encoder, a + b, 32, desc=f"crops {dataset}")
        seconds = time.perf_counter() - start
        n = len(a)
        curves = candidate_curves(layers, n, BATCH)
        picks = {}
        for name, curve in curves.items():
            if name == "align_uniform":
                continue
            k, p = recommend_top_k(curve, crop_queries(n))  # every crop is one query
            picks[name] = {"k": k, "p": p, "best_layer": int(np.argmax(curve))}
        k, p = picks["inbatch"]["k"], picks["inbatch"]["p"]
        entry = {
            "k": k, "p": p, "best_layer": int(np.argmax(curves["inbatch"])),
            "curve": curves["inbatch"], "n_docs": n, "n_queries": crop_queries(n),
            "signal": "crops",
            "seconds": round(seconds, 1), "train_docs": len(data.train_docs),
            "candidates": {name: {**picks.get(name, {}), "curve": c}
                           for name, c in curves.items()}}
        return entry, (f"{dataset}: auto k={k} (p={p}); candidates "
                       f"{ {m: v['k'] for m, v in picks.items()} }; {seconds:.0f}s; "
                       f"{[round(c, 3) for c in curves['inbatch']]}")

    run_stage(args, "auto", measure)


def stage_precision(args: argparse.Namespace) -> None:
    """The label-free signal in float32 and under a bf16 autocast, same crops, same run."""
    import torch

    from lastlayer.config import ObjectiveConfig
    from lastlayer.training.choose_k import crop_pairs, crop_queries, pair_retrieval

    def measure(encoder, dataset: str, data: EvalData) -> tuple[dict[str, Any], str]:
        a, b = crop_pairs(data.train_docs, ObjectiveConfig(), EVAL_SEED, args.docs)
        n, entry = len(a), {}
        for name in ("fp32", "bf16"):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                layers = layer_embeddings(encoder, a + b, 32, desc=f"crops {dataset} {name}")
            seconds = time.perf_counter() - start
            curve = [pair_retrieval(x[:n], x[n:], BATCH) for x in layers]
            k, p = recommend_top_k(curve, crop_queries(n))
            entry[name] = {"k": k, "p": p, "curve": curve, "seconds": round(seconds, 1)}
        diff = max(abs(x - y) for x, y in zip(entry["fp32"]["curve"], entry["bf16"]["curve"],
                                              strict=True))
        entry.update(same_k=entry["fp32"]["k"] == entry["bf16"]["k"],
                     max_abs_curve_diff=round(diff, 4), n_docs=n, cpu=cpu_description())
        return entry, (f"{dataset}: fp32 k={entry['fp32']['k']} ({entry['fp32']['seconds']}s), "
                       f"bf16 k={entry['bf16']['k']} ({entry['bf16']['seconds']}s), "
                       f"max |curve diff| {diff:.3f}")

    run_stage(args, "precision", measure)


def findings_row(dataset: str, k: int) -> dict[str, Any] | None:
    """A finished findings run with this protocol (crop, full, lr 2e-4, seed 42, 40 x 32),
    cached rows first (the mode this benchmark trains in), else a fresh-view one."""
    rows = [r for r in read_rows(findings.DEFAULT_OUT)
            if r["model"] == MODEL and r["dataset"] == dataset and r["objective"] == "crop"
            and r["kind"] == "full" and r["k"] == k and r["seed"] == EVAL_SEED
            and r["steps"] == STEPS and r["batch_size"] == BATCH]
    rows.sort(key=lambda r: not r["cached"])
    return rows[0] if rows else None


def budget_row(dataset: str, k: int) -> dict[str, Any] | None:
    """The same protocol's run in ````benchmarks.budget``'s results (40 steps over the
    1,280 pairs of seed 42, cached, full unfreeze, lr 2e-4): where the findings never trained
    this k."""
    path = RESULTS / "budget.jsonl"
    rows = [r for r in read_rows(path)
            if r["dataset"] == dataset and r["k"] == k and r["seed"] == EVAL_SEED
            and r["steps"] == STEPS and r["batch_size"] == BATCH
            and r["pairs"] == STEPS * BATCH]
    return rows[0] | {"cached": True} if rows else None


def stage_train(args: argparse.Namespace) -> None:
    """Train the probe's k and the label-free k where they differ (one group per data set,
    cached bottom layers below the larger k, so both ks see the same 1,280 pairs)."""
    results = read(args.out)
    for dataset in args.datasets:
        entry = results.get(dataset, {})
        if "probe" not in entry or "auto" not in entry:
            print(f"{dataset}: run the probe and auto stages first", flush=True)
            continue
        ks = sorted({entry["probe"]["k"], entry["auto"]["k"]})
        gains = entry.get("gains", {})
        for k in ks:
            if str(k) in gains:
                continue
            row, source = findings_row(dataset, k), "findings.jsonl"
            if row is None:
                row, source = budget_row(dataset, k), "budget.jsonl"
            if row is None:
                continue
            gains[str(k)] = {key: row[key] for key in ("delta", "value", "base_value", "cached",
                                                      "train_s", "metric")
                             if key in row} | {"ci95": [row.get("ci95_low"),
                                                        row.get("ci95_high")],
                                               "source": source}
        todo = [k for k in ks if str(k) not in gains]
        if len(ks) > 1 and todo:
            spec = protocol.MODELS[MODEL]
            group = findings.open_group(MODEL, dataset, args.data_root,  # one cache for both
                                        args.work / f"k{max(ks)}", k=max(ks))
            for k in todo:
                run = findings.Run(MODEL, dataset, "crop", "full", k, spec.lr["full"],
                                   EVAL_SEED, True)
                row = findings.train_run(group, run, args.data_root)
                gains[str(k)] = {key: row[key] for key in ("delta", "value", "base_value",
                                                          "cached", "train_s", "metric")
                                 } | {"ci95": [row.get("ci95_low"), row.get("ci95_high")],
                                      "source": f"this benchmark (cache k={max(ks)})"}
                results = read(args.out)
                results[dataset]["gains"] = gains
                write(args.out, results)
                print(f"{dataset} k={k}: {row['delta']:+.4f}", flush=True)
        results = read(args.out)
        results[dataset]["gains"] = gains
        write(args.out, results)


def _gain(gains: dict[str, Any], k: int) -> str:
    """``+0.058 [+0.029, +0.089]`` for k, or a dash when not trained."""
    g = gains.get(str(k))
    if g is None:
        return "–"
    ci = g.get("ci95") or [None, None]
    return f"{g['delta']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] is not None else "")


def _top4(dataset: str) -> dict[str, Any]:
    """The fixed top-4 default's gain (findings, cached, seed 42), for comparison."""
    row = findings_row(dataset, 4)
    return {} if row is None else {"4": {"delta": row["delta"],
                                         "ci95": [row.get("ci95_low"), row.get("ci95_high")]}}


def report(args: argparse.Namespace) -> None:
    """The agreement table (markdown) from the results file."""
    results = read(args.out)
    rows = []
    agree = 0
    for dataset in DATASETS:
        entry = results.get(dataset, {})
        if "probe" not in entry or "auto" not in entry:
            continue
        probe, auto, gains = entry["probe"], entry["auto"], entry.get("gains", {})
        same = probe["k"] == auto["k"]
        agree += same
        rows.append([dataset, f"{probe['k']} ({probe['p']})", f"{auto['k']} ({auto['p']})",
                     "yes" if same else "no", _gain(gains, probe["k"]), _gain(gains, auto["k"]),
                     _gain(_top4(dataset), 4), f"{auto['seconds']:.0f}"])
    print(tables.markdown(["data set", "probe k (p)", "label-free k (p)", "agree",
                           "gain, probe's k", "gain, label-free k", "gain, top-4",
                           "choosing (s)"], rows))
    print(f"\nAgreement: {agree} of {len(rows)} data sets. Gains: 40 steps x 32 crop pairs, "
          "full unfreeze, seed 42 (95% paired-bootstrap CI; SciFact: nDCG@10, no CI); '–': "
          "not trained.")
    precision = [[d, f"{e['fp32']['k']} ({e['fp32']['p']})", f"{e['bf16']['k']} ({e['bf16']['p']})",
                  f"{e['max_abs_curve_diff']:.3f}", f"{e['fp32']['seconds']:.1f}",
                  f"{e['bf16']['seconds']:.1f}"]
                 for d in DATASETS if (e := results.get(d, {}).get("precision"))]
    if precision:
        print("\n" + tables.markdown(["data set", "fp32 k (p)", "bf16 autocast k (p)",
                                      "largest curve difference", "fp32 (s)", "bf16 (s)"],
                                     precision))


def export(out: Path, stage: str, folder: Path | None) -> None:
    """Copy one stage's {corpus: {k, p, curve, n_docs, ...}} to ``folder``/probe_k.json or
    auto_k.json (for other scripts that wait on the ks); nothing without a folder."""
    results = read(out)
    picked = {d: r[stage] for d, r in results.items() if stage in r}
    if picked and folder is not None:
        write_json(folder / ("probe_k.json" if stage == "probe" else "auto_k.json"), picked)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.choose_k",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("probe", "auto", "precision", "train", "report"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "choose_k",
                        help="caches and base embeddings of the train stage")
    parser.add_argument("--export-dir", type=Path, default=None,
                        help="also write each stage's ks to probe_k.json / auto_k.json here")
    parser.add_argument("--docs", type=int, default=256,
                        help="training documents for the label-free signal (2 crops each)")
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    {"probe": stage_probe, "auto": stage_auto, "precision": stage_precision,
     "train": stage_train, "report": report}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
