"""RSS of an Embedder computing in bf16 over batches of changing shapes, per oneDNN cache size.

Usage (offline; one process per setting, as oneDNN reads the variable once)::

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.kernel_cache               # 64: lastlayer's
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.kernel_cache --cache 1024  # oneDNN's own
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.kernel_cache --dtype float32

A server meets a new (batch, tokens) shape with nearly every batch; oneDNN compiles and
keeps a bf16 kernel per shape. This runs ``--batches`` encode calls of 1-32 medical
abstracts cut at random lengths (seed 0), base and the shipped MiniLM adapter mixed, and
prints the RSS and elapsed seconds every 200 calls (docs/precision.md).
"""

from __future__ import annotations

import argparse
import os
import random
import time

from benchmarks.bench import MEDICAL, ROOT
from benchmarks.bench.measure import rss_mb

ADAPTER = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_cache",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--cache", help="ONEDNN_PRIMITIVE_CACHE_CAPACITY (default: lastlayer's)")
    parser.add_argument("--batches", type=int, default=1200)
    args = parser.parse_args(argv)
    if args.cache:
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = args.cache
    from lastlayer.corpus import read_texts
    from lastlayer.inference import Embedder

    emb = Embedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu", dtype=args.dtype)
    emb.load(ADAPTER, "med")
    texts = read_texts(MEDICAL, max_docs=500)
    rng = random.Random(0)
    start = time.perf_counter()
    for i in range(1, args.batches + 1):
        batch = [t[: rng.randint(20, 600)] for t in rng.sample(texts, rng.randint(1, 32))]
        emb.encode(batch, adapter=rng.choice([None, "med"]), progress=False)
        if i % 200 == 0:
            print(f"{args.dtype} cache={os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY')} "
                  f"batch {i}: RSS {rss_mb():.0f} MB, {time.perf_counter() - start:.1f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
