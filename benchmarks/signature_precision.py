"""Routing signatures made in bf16: do they route as the float32 ones do?

Training writes an adapter's routing signature at the end of the run, in the run's
precision: under ``train.mixed_precision: bf16`` (``auto`` on a CPU with AMX or
AVX512-BF16) its bottom pass runs under the training steps' bf16 autocast. The signature is
the artifact's stored reference, and the ``Embedder`` routes against it in whatever
precision it runs (bf16 weights at ``dtype: auto`` on such a CPU, float32 elsewhere). This
measures, on the four shipped SmolLM2-135M adapters (medical, ohsumed, news,
movie_reviews), in one run:

- each adapter's signature made from the same seeded sample of its training
  documents (``train.routing_docs`` of its recipe), as training makes it: float32, and
  under a bf16 autocast; seconds of each;
- the held-out documents of each domain (a seeded sample of the 1,000 each recipe held
  out) and two sets from no adapter's domain (Cranfield, SciFact), pooled at block L−k by
  the float32 base and by a bf16-weight copy (what a bf16 ``Embedder`` routes with);
- routing (:func:`lastlayer.core.routing.assign`) of every text for each pair of
  signature and state precision: accuracy per set, and agreement with the float32/float32
  decisions; and, as the yardstick, a float32 signature fitted with the next seed (k-means
  start and calibration split) from the same float32 states.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.signature_precision \\
        --data-root DATA                              # ~7 min on 2 idle cores

``DATA`` holds the data sets (default ``$LASTLAYER_DATA``). Results:
``benchmarks/results/signature_precision.json`` (``--out``), a table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench import RESULTS, models, tables
from benchmarks.bench.measure import cpu_description
from benchmarks.bench.results import write_json
from benchmarks.routing import (
    BASE,
    DOMAINS,
    OOD,
    add_sample_arguments,
    confusion,
    correct_shares,
    folder_of,
    held_out,
    ood_texts,
    recipe_of,
)
from lastlayer.core.encoder import Encoder
from lastlayer.core.layers import find_layer_stack
from lastlayer.core.routing import (
    DEFAULT_MAX_DOCS,
    RoutingSignature,
    assign,
    read_signature,
    sample_indices,
    signature_from_states,
)
from lastlayer.core.split import pooled_block_inputs
from lastlayer.evaluation.datasets import load_eval_set
from lastlayer.training.data import training_documents

PRECISIONS = ("fp32", "bf16")
RESEEDED = "fp32, seed + 1"
VARIANTS = (*PRECISIONS, RESEEDED)


def make_signatures(base: Encoder, top_k: int, data_root: Path) -> tuple[
        dict[str, dict[str, RoutingSignature]], dict[str, dict[str, float]]]:
    """Each domain's signature as training makes it (its recipe's sample, seed and batch
    size: :func:`lastlayer.core.routing.signature_for_texts`, step by step), from states
    pooled in float32 and under a bf16 autocast; plus, from the float32 states, one fitted
    with another seed (k-means start and calibration split: the method's own spread).
    Returns ``{variant: {domain: signature}}`` and the seconds of each pooling pass."""
    layer = find_layer_stack(base.model).num_layers - top_k
    signatures: dict[str, dict[str, RoutingSignature]] = {v: {} for v in VARIANTS}
    seconds: dict[str, dict[str, float]] = {p: {} for p in PRECISIONS}
    for domain in DOMAINS:
        recipe = recipe_of(folder_of(domain), data_root)
        docs = training_documents(recipe, load_eval_set(recipe.eval, recipe.seed))
        rows = sample_indices(len(docs), recipe.train.routing_docs or DEFAULT_MAX_DOCS,
                              recipe.seed)
        sample = [docs[i] for i in rows]
        for precision in PRECISIONS:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                pooled = pooled_block_inputs(base, sample, top_k, recipe.eval.batch_size,
                                             progress=False)
            seconds[precision][domain] = round(time.perf_counter() - start, 1)
            signatures[precision][domain] = signature_from_states(pooled, layer,
                                                                  seed=recipe.seed)
            if precision == "fp32":
                signatures[RESEEDED][domain] = signature_from_states(pooled, layer,
                                                                     seed=recipe.seed + 1)
    return signatures, seconds


def bf16_copy(base: Encoder) -> Encoder:
    """The base with bf16 weights, as a bf16 ``Embedder`` holds it."""
    return dataclasses.replace(base, model=copy.deepcopy(base.model).to(torch.bfloat16))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.signature_precision",
                                     description=__doc__.split("\n\n")[0])
    add_sample_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS / "signature_precision.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    base = models.base_of(folder_of(DOMAINS[0]))
    layer = read_signature(folder_of(DOMAINS[0])).layer
    top_k = find_layer_stack(base.model).num_layers - layer

    signatures, signature_seconds = make_signatures(base, top_k, args.data_root)

    texts = [held_out(folder_of(d), args.docs, args.data_root, args.seed)[0] for d in DOMAINS]
    texts += [ood_texts(name, args.ood_docs, args.data_root, args.seed) for name in OOD]
    truth = [name for name, t in zip([*DOMAINS, *OOD], texts, strict=True) for _ in t]
    flat = [t for group in texts for t in group]
    states, state_seconds = {}, {}
    for precision, encoder in (("fp32", base), ("bf16", bf16_copy(base))):
        start = time.perf_counter()
        states[precision] = pooled_block_inputs(encoder, flat, top_k, args.batch_size,
                                                progress=False)
        state_seconds[precision] = round(time.perf_counter() - start, 1)

    routed = {(s, x): assign(signatures[s], {layer: states[x]})
              for s in VARIANTS for x in PRECISIONS}
    reference = routed["fp32", "fp32"]
    rows = {f"signature {s} / states {x}": {
        "agreement_with_fp32": round(float(np.mean([a == b for a, b in
                                                     zip(r, reference, strict=True)])), 4),
        "accuracy": {row: round(share, 4) for row, share in correct_shares(
            confusion(truth, r, [*DOMAINS, *OOD], [*DOMAINS, BASE])).items()},
    } for (s, x), r in routed.items()}
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "setup": {"adapters": DOMAINS, "ood": OOD, "docs_per_domain": args.docs,
                  "ood_docs": args.ood_docs, "seed": args.seed, "signature_layer": layer,
                  "machine": {"cpu": cpu_description(), "cpus": os.cpu_count(),
                              "torch_threads": torch.get_num_threads(),
                              "load_avg_1min": os.getloadavg()[0]}},
        "signature_pooling_seconds": signature_seconds,
        "state_seconds": state_seconds,
        "routing": rows,
        "texts": len(truth),
    }
    write_json(args.out, result, indent=2)
    sets = [*DOMAINS, *OOD]
    print(tables.markdown(
        ["signature", "states", "agreement with fp32/fp32", *sets],
        [[*(part.split(" ", 1)[1] for part in name.split(" / ")),
          f"{row['agreement_with_fp32']:.1%}", *(f"{row['accuracy'][s]:.0%}" for s in sets)]
         for name, row in rows.items()]))
    print({p: sum(t.values()) for p, t in signature_seconds.items()}, state_seconds)
    return result


if __name__ == "__main__":
    main()
