"""``lastlayer eval``: in-domain metrics of a base model or an adapter on labelled corpora
(kNN accuracy, V-measure, ARI) or BEIR folders (nDCG@10, Recall@100)."""

from __future__ import annotations

import json

from lastlayer.cli.protocol import resolve_protocol
from lastlayer.config.commands import EvalOptions as Options

HELP = ("Embed labelled corpora (kNN accuracy, V-measure, ARI) or BEIR folders (nDCG@10, "
        "Recall@100) with a base model or an adapter.")
EXAMPLES = """examples:
  lastlayer eval adapters/medical/smollm2-135m_full-auto_crop --data labelled.jsonl.gz
  lastlayer eval sentence-transformers/all-MiniLM-L6-v2 --data beir/scifact --max-length 256
  lastlayer eval TARGET --data a.jsonl.gz --data beir/scifact --json
  lastlayer eval acme/minilm-medical@v1 --data labelled.jsonl.gz   # an adapter on the Hub"""


def run(args: Options) -> int:
    """Evaluate ``args.target`` on each ``--data`` and print a table (or JSON).

    For an adapter, what the command line leaves unset comes from its recipe's ``eval``
    section and seed (:mod:`lastlayer.cli.protocol`, as for ``probe``), so its
    ``knn_accuracy`` on the recipe's eval data is the adapted number of ``eval.json``
    (same sample, same leave-one-out protocol).
    """
    from lastlayer.core.adapters import load_target
    from lastlayer.core.int8 import quantize_trunk
    from lastlayer.evaluation.datasets import dataset_kind
    from lastlayer.evaluation.suite import evaluate_encoder, format_table, results_json
    from lastlayer.hub import adapter_folder

    folder = adapter_folder(args.target)  # a Hub adapter: its cached snapshot
    protocol = resolve_protocol(args, folder, max_docs=None)  # a base model: every document
    overrides = {"max_length": args.max_length} if args.max_length else {}
    if args.dtype:  # default: as trained (an adapter's eval.json number, to the last digit)
        overrides["dtype"] = args.dtype
    encoder = load_target(folder or args.target, **overrides)
    if args.quantize:
        quantize_trunk(encoder.engine, args.quantize,
                       encoder.meta.base.quantization if encoder.meta else None)
    results = {}
    for data in args.data:
        # A recipe's eval.max_docs samples labelled files; a BEIR corpus only when asked.
        beir = dataset_kind(data) == "beir"
        max_docs = args.max_docs if beir else protocol.max_docs
        results[str(data)] = evaluate_encoder(
            encoder, data, k=protocol.k, metric=protocol.metric, split_seed=protocol.seed,
            max_docs=max_docs, batch_size=args.batch_size, clustering=not args.no_clustering,
            text_field=protocol.text_field, label_field=protocol.label_field,
            progress=not args.json,
        )
    print(json.dumps(results_json(results), indent=2) if args.json else format_table(results))
    return 0
