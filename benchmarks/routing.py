"""Routing (``adapter="auto"``) on the shipped SmolLM2 adapters: accuracy, confusion, kNN.

    python -m benchmarks.routing                   # the report (21 min on 2 busy cores)
    python -m benchmarks.routing --regenerate      # first recompute the shipped signatures
    python -m benchmarks.routing --regenerate-only --signature-docs 1000
    python -m benchmarks.routing --docs 60 --ood-docs 40   # a quick look

What it measures, on the four shipped SmolLM2-135M LoRA top-4 adapters (medical =
medical_abstracts, ohsumed = ohsumed23, news = reuters_r8, movie_reviews = mr):

- **routing accuracy and confusion matrix** on held-out documents of each domain: a
  seeded sample (``--docs``) of the 1,000 labelled documents each recipe held out of
  training, so none of them is in the training data or the signature's sample; plus two
  sets from no adapter's domain, which should go to the base: Cranfield (aeronautics
  abstracts) and SciFact (biomedical abstracts: close to the two medical domains);
- **kNN quality of routed embeddings**: per domain, leave-one-out kNN accuracy (k and
  metric of the recipe: 10, euclidean) of the same held-out documents embedded by the
  adapter routing chose for each text (the base where it chose none), by the domain's own
  adapter (the oracle), by the base, and by every other adapter routing sent some of the
  domain's texts to (for medical and ohsumed: always both medical adapters).

Everything comes from one bottom pass per text: block L−k's inputs (the same for the base
and every top-k adapter on it) are computed once by the base, mean-pooled for routing,
and handed to each adapter's head, its private top 4 blocks
(:func:`lastlayer.core.heads.embed_from_inputs`), as the inference engine that shares the
trunk does; the base is never changed. ``--regenerate`` first rewrites each shipped artifact's
``routing.safetensors`` with :func:`lastlayer.training.sign.sign_artifact` (what training
writes: a seeded sample of ``--signature-docs`` training documents), timing each.

Data outside the project (ohsumed23, reuters_r8, mr, Cranfield, SciFact) is read from
``--data-root`` (default ``$LASTLAYER_DATA``); recipe paths under ``../shared/data/`` are
resolved against it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import findings
from benchmarks.bench import DATA_ROOT, RESULTS, ROOT, models, protocol, tables
from benchmarks.bench.measure import cpu_description
from benchmarks.bench.results import write_json
from lastlayer.config import Recipe, load_recipe
from lastlayer.core.encoder import Encoder, mean_pool
from lastlayer.core.heads import embed_from_inputs, embed_keeping_inputs, model_head
from lastlayer.core.layers import find_layer_stack
from lastlayer.core.routing import assign, read_signature
from lastlayer.core.split import pooled_block_inputs
from lastlayer.evaluation.datasets import load_eval_set, read_beir
from lastlayer.evaluation.metrics import knn_accuracy

SMOLLM2 = "smollm2-135m_lora-top4_crop"
DOMAINS = ["medical", "ohsumed", "news", "movie_reviews"]
MINILM = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"
OOD = ["cranfield", "scifact"]
MEDICAL_FAMILY = {"medical", "ohsumed"}
BASE = "base"


def folder_of(domain: str) -> Path:
    return ROOT / "adapters" / domain / SMOLLM2


def data_path(path: str | None, data_root: Path) -> str | None:
    """A recipe's data path, resolved: the Hub copy a shipped recipe names
    (:data:`benchmarks.findings.HUB_SOURCES`) by the local copy under ``data_root`` that the
    adapter was trained and measured on, ``../shared/data/X`` under ``data_root``, other
    relative paths under the project root; other Hub ids (``hf://``) as they are."""
    local = {hub: protocol.DATASETS[name] for name, (hub, _) in findings.HUB_SOURCES.items()}
    if path in local:
        return str(data_root / local[path])
    if path is None or path.startswith("hf://") or Path(path).is_absolute():
        return path
    prefix = "../shared/data/"
    return str(data_root / path[len(prefix):]) if path.startswith(prefix) else str(ROOT / path)


def recipe_of(folder: Path, data_root: Path) -> Recipe:
    """The artifact's recipe with its data paths resolved."""
    recipe = load_recipe(folder / "recipe.yaml")
    return load_recipe(folder / "recipe.yaml", [
        f"data.train={data_path(recipe.data.train, data_root)}",
        f"eval.data={data_path(recipe.eval.data, data_root)}",
    ])


def held_out(folder: Path, n: int, data_root: Path, seed: int) -> tuple[list[str], list[str]]:
    """``n`` of the labelled documents the artifact's training held out (seeded)."""
    recipe = recipe_of(folder, data_root)
    sample = load_eval_set(recipe.eval, recipe.seed)
    rows = np.random.default_rng(seed).choice(len(sample.texts), n, replace=False)
    return [sample.texts[i] for i in rows], [sample.labels[i] for i in rows]


def ood_texts(name: str, n: int, data_root: Path, seed: int) -> list[str]:
    """``n`` corpus documents (title + text) of a BEIR folder (seeded)."""
    docs = read_beir(data_root / name).docs
    return [docs[i] for i in np.random.default_rng(seed).choice(len(docs), n, replace=False)]


def regenerate(data_root: Path, max_docs: int, base: Encoder) -> dict[str, Any]:
    """Rewrite every shipped artifact's signature from its training data; time each."""
    from lastlayer.training.sign import sign_artifact

    timings = {}
    for name, folder, encoder in [
        *[(d, folder_of(d), base) for d in DOMAINS], ("medical/minilm", MINILM, None),
    ]:
        recipe = load_recipe(folder / "recipe.yaml")
        start = time.perf_counter()
        sig = sign_artifact(folder, encoder, data=data_path(recipe.data.train, data_root),
                            eval_data=data_path(recipe.eval.data, data_root),
                            max_docs=max_docs)
        seconds = time.perf_counter() - start
        timings[name] = {"seconds": round(seconds, 1), "num_documents": sig.num_documents,
                         "layer": sig.layer, "centroids": len(sig.centroids),
                         "threshold": round(sig.threshold, 4)}
        print(f"signature {name}: {sig.num_documents} docs in {seconds:.1f}s", flush=True)
    return timings


def bottom_pass(base: Encoder, texts: list[str], k: int, batch_size: int):
    """Base embeddings, block L−k input cache and mean-pooled block L−k inputs of ``texts``:
    one forward of the whole model, split at L−k."""
    vectors, cache = embed_keeping_inputs(base, texts, model_head(base, k), batch_size,
                                          desc="base + bottom")
    batches = iter(cache)
    pooled = base.encode(texts, batch_size, progress=False, embed=lambda batch: mean_pool(
        next(batches), batch["attention_mask"]).float())
    return vectors.numpy(), cache, pooled.numpy()


def confusion(truth: list[str], routed: list[str | None], rows: list[str],
              cols: list[str]) -> dict[str, dict[str, int]]:
    """Counts of ``routed`` (None counted as the base) per true set."""
    table = {r: dict.fromkeys(cols, 0) for r in rows}
    for t, r in zip(truth, routed, strict=True):
        table[t][r or BASE] += 1
    return table


def correct_shares(table: dict[str, dict[str, int]]) -> dict[str, float]:
    """The share of each set of a :func:`confusion` table routed right: to its own adapter,
    or (sets from no adapter's domain) to the base."""
    return {row: (c[row] if row in c else c[BASE]) / sum(c.values()) for row, c in table.items()}


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """The texts routed: held-out and outside documents, their data root, batch and seed."""
    parser.add_argument("--docs", type=int, default=150, help="held-out documents per domain")
    parser.add_argument("--ood-docs", type=int, default=100, help="documents per outside set")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seeds the held-out samples")


def markdown(result: dict[str, Any]) -> str:
    """The README tables from a result: the confusion matrix, then kNN per domain."""
    cols = [*DOMAINS, BASE]
    shares = correct_shares(result["confusion"])
    confusion_rows = [[row, *(counts[c] for c in cols), f"{shares[row]:.0%}"]
                      for row, counts in result["confusion"].items()]
    knn_rows = [[domain, f"{knn['base']:.3f}", f"{knn['oracle']:.3f}", f"{knn['routed']:.3f}",
                 *(f"{knn['under'][d]:.3f}" if d in knn["under"] else "–" for d in DOMAINS)]
                for domain, knn in result["knn"].items()]
    return "\n\n".join([
        tables.markdown(["true set", *cols, "correct"], confusion_rows,
                        align="l" + "r" * (len(cols) + 1)),
        tables.markdown(["domain", "base", "oracle (own adapter)", "routed",
                         *(f"under {d}" for d in DOMAINS)], knn_rows,
                        align="l" + "r" * (3 + len(DOMAINS)))])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing",
                                     description=__doc__.split("\n\n")[0])
    add_sample_arguments(parser)
    parser.add_argument("--regenerate", action="store_true",
                        help="first rewrite the shipped artifacts' routing signatures")
    parser.add_argument("--regenerate-only", action="store_true",
                        help="rewrite the shipped signatures and stop")
    parser.add_argument("--after", type=int, default=0, metavar="PID",
                        help="read the signatures only once process PID (a running "
                             "--regenerate-only) has ended; the bottom passes run meanwhile")
    parser.add_argument("--signature-docs", type=int, default=300,
                        help="training documents per signature (with --regenerate)")
    parser.add_argument("--out", type=Path, default=RESULTS / "routing.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    base = models.base_of(folder_of(DOMAINS[0]))
    loaded = time.perf_counter() - started
    signatures_made = regenerate(args.data_root, args.signature_docs, base) \
        if args.regenerate or args.regenerate_only else None
    if args.regenerate_only:
        return {"regenerated": signatures_made}

    texts, labels = {}, {}
    for domain in DOMAINS:
        texts[domain], labels[domain] = held_out(folder_of(domain), args.docs, args.data_root,
                                                 args.seed)
    for name in OOD:
        texts[name] = ood_texts(name, args.ood_docs, args.data_root, args.seed)
    truth = [name for name, t in texts.items() for _ in t]

    layer = read_signature(folder_of(DOMAINS[0])).layer  # the block whose inputs are pooled
    top_k = find_layer_stack(base.model).num_layers - layer
    start = time.perf_counter()
    vectors: dict[tuple[str, str], np.ndarray] = {}  # (true set, adapter) -> embeddings
    caches, pooled = {}, []
    for domain in DOMAINS:
        vectors[domain, BASE], caches[domain], p = bottom_pass(base, texts[domain], top_k,
                                                               args.batch_size)
        pooled.append(p)
    for name in OOD:  # routed only: no labels for kNN, so no top blocks needed
        pooled.append(pooled_block_inputs(base, texts[name], top_k, args.batch_size,
                                          desc=f"bottom ({name})"))
    bottom_seconds = time.perf_counter() - start

    while args.after and Path(f"/proc/{args.after}").exists():  # signatures still being made
        time.sleep(5)
    signatures = {d: read_signature(folder_of(d)) for d in DOMAINS}
    start = time.perf_counter()
    routed = assign(signatures, {layer: np.concatenate(pooled)})
    route_seconds = time.perf_counter() - start
    table = confusion(truth, routed, [*DOMAINS, *OOD], [*DOMAINS, BASE])
    routed_of = {d: [r for r, t in zip(routed, truth, strict=True) if t == d] for d in DOMAINS}

    # Each domain's texts under its own adapter, every adapter routing sent some of them
    # to, and (medical, ohsumed) both medical adapters: top 4 blocks from the cached inputs.
    start = time.perf_counter()
    for adapter in DOMAINS:
        wanted = [d for d in DOMAINS if adapter == d or adapter in routed_of[d]
                  or {adapter, d} <= MEDICAL_FAMILY]
        head = models.adapter_head(base, folder_of(adapter))
        if head.top_k != top_k:
            raise SystemExit(f"{adapter}: top {head.top_k} blocks, but the cached inputs are "
                             f"block {layer}'s (top {top_k}).")
        for d in wanted:
            vectors[d, adapter] = embed_from_inputs(
                base, texts[d], caches[d], head, args.batch_size,
                desc=f"{d} under top {top_k} of {adapter}").numpy()
        del head
    heads_seconds = time.perf_counter() - start

    knn = {}
    for domain in DOMAINS:
        recipe = recipe_of(folder_of(domain), args.data_root)

        def score(matrix: np.ndarray, recipe: Recipe = recipe, domain: str = domain) -> float:
            return round(knn_accuracy(matrix, labels[domain], recipe.eval.k,
                                      recipe.eval.metric).accuracy, 4)

        chosen = np.stack([vectors[domain, r or BASE][i]
                           for i, r in enumerate(routed_of[domain])])
        knn[domain] = {
            "base": score(vectors[domain, BASE]), "oracle": score(vectors[domain, domain]),
            "routed": score(chosen),
            "under": {a: score(v) for (d, a), v in vectors.items() if d == domain},
        }
    in_domain = [t in DOMAINS for t in truth]
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "setup": {
            "adapters": {d: str(folder_of(d).relative_to(ROOT)) for d in DOMAINS},
            "docs_per_domain": args.docs, "ood_docs": args.ood_docs, "seed": args.seed,
            "held_out": "seeded sample of the 1,000 labelled documents each recipe held out "
                        "of training (never in the training data nor the signature sample)",
            "ood": {"cranfield": "Cranfield corpus (aeronautics), title + text",
                    "scifact": "SciFact corpus (biomedical abstracts), title + text"},
            "signature_layer": layer, "max_length": base.max_length,
            "machine": {"platform": platform.platform(), "cpu": cpu_description(),
                        "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(),
                        "load_avg_1min": os.getloadavg()[0]},
        },
        "signatures": {d: {"num_documents": s.num_documents, "centroids": len(s.centroids),
                           "threshold": round(s.threshold, 4), "quantile": s.quantile}
                       for d, s in signatures.items()},
        "regenerated": signatures_made,
        "confusion": table,
        "accuracy": {
            "per_set": correct_shares(table),
            "in_domain_exact": float(np.mean([r == t for r, t, i in
                                              zip(routed, truth, in_domain, strict=True) if i])),
            "in_domain_medical_merged": float(np.mean([
                r == t or {r, t} <= MEDICAL_FAMILY
                for r, t, i in zip(routed, truth, in_domain, strict=True) if i])),
            "in_domain_to_base": float(np.mean([r is None for r, i in
                                                zip(routed, in_domain, strict=True) if i])),
        },
        "knn": knn,
        "seconds": {"load_base": round(loaded, 1), "bottom_pass": round(bottom_seconds, 1),
                    "assign": round(route_seconds, 3), "adapter_heads": round(heads_seconds, 1),
                    "total": round(time.perf_counter() - started, 1)},
        "texts": len(truth),
    }
    write_json(args.out, result, indent=2)
    print(markdown(result))
    print(json.dumps(result["accuracy"], indent=2), json.dumps(result["seconds"]))
    return result


if __name__ == "__main__":
    main()
