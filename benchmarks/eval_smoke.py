"""Real-data check of `lastlayer.evaluation`: a packaged model on shared data sets, timed.

Not a test: it embeds thousands of documents (minutes on 2 CPU cores). Run it offline:

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.eval_smoke
    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.eval_smoke --max-length 128 \\
        --data $LASTLAYER_DATA/cranfield $LASTLAYER_DATA/ohsumed23/ohsumed23.jsonl.gz

Prints one line per data set (metrics, wall time split into reading+embedding+scoring),
the table of `format_table`, and the `--json` object that `lastlayer eval` would print.
Reference: BEIR / MTEB report nDCG@10 = 0.645 for all-MiniLM-L6-v2 on SciFact (test
qrels, max_seq_length 256); the data folder's README.md has TF-IDF baselines.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from benchmarks.bench import DATA_ROOT
from benchmarks.bench.models import load_target

DEFAULT_DATA = [
    DATA_ROOT / "scifact",
    DATA_ROOT / "medical_abstracts" / "medical_abstracts_test.jsonl.gz",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_smoke",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="adapter folder or base model id")
    parser.add_argument("--data", nargs="+", default=[str(p) for p in DEFAULT_DATA])
    parser.add_argument("--max-length", type=int, default=256,
                        help="truncation; 256 is all-MiniLM-L6-v2's own max_seq_length")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-docs", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from lastlayer.evaluation.suite import evaluate_encoder, format_table, results_json

    start = time.perf_counter()
    encoder = load_target(args.target, max_length=args.max_length)
    print(f"loaded {args.target} (max_length {args.max_length}) in "
          f"{time.perf_counter() - start:.1f} s")
    results = {}
    for data in args.data:
        start = time.perf_counter()
        results[data] = evaluate_encoder(encoder, data, batch_size=args.batch_size,
                                         max_docs=args.max_docs)
        print(f"{data}: {results[data]}  ({time.perf_counter() - start:.1f} s)")
    print(format_table(results))
    print(json.dumps(results_json(results), indent=2))


if __name__ == "__main__":
    main()
