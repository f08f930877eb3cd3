"""``lastlayer probe``: kNN accuracy of every layer (base vs adapted), the weight change of
each block and a suggested top-k; writes probe.json and probe.png."""

from __future__ import annotations

from pathlib import Path

from lastlayer.cli.protocol import resolve_protocol
from lastlayer.config import ConfigError, EvalConfig
from lastlayer.config.commands import ProbeOptions as Options

HELP = ("kNN accuracy of every layer (base vs adapted) and a suggested top-k; writes "
        "probe.json and probe.png.")
EXAMPLES = """examples:
  lastlayer probe adapters/medical/smollm2-135m_full-auto_crop     # data etc. from its recipe
  lastlayer probe sentence-transformers/all-MiniLM-L6-v2 --data labelled.jsonl.gz
  lastlayer probe TARGET --data FILE --max-docs 500 --out runs/probe
  lastlayer probe acme/minilm-medical --data labelled.jsonl.gz      # an adapter on the Hub"""


def run(args: Options) -> int:
    """Probe ``args.target``, print the table, write probe.json and probe.png.

    The protocol (sample, seed, k, metric, fields) is read as ``eval`` reads it
    (:mod:`lastlayer.cli.protocol`): an adapter's top layer is measured as its ``eval.json``.
    """
    from lastlayer.extras import require

    require("matplotlib", "plot", "lastlayer probe (drawing probe.png)")  # before the long part
    from lastlayer.hub import adapter_folder

    folder = adapter_folder(args.target)  # a Hub adapter: its cached snapshot
    protocol = resolve_protocol(args, folder, max_docs=EvalConfig.max_docs)
    data = args.data or protocol.data
    if not data:
        raise ConfigError("--data is required (a labelled .jsonl/.csv/.parquet corpus).")
    from lastlayer.evaluation.probe import format_probe, probe, write_probe

    result = probe(
        args.target, data, k=protocol.k, metric=protocol.metric, max_docs=protocol.max_docs,
        seed=protocol.seed, text_field=protocol.text_field, label_field=protocol.label_field,
    )
    print(format_probe(result))
    # next to a local adapter; never inside the Hugging Face cache
    local = folder is not None and Path(args.target).expanduser().exists()
    out = args.out or (str(folder) if local else "runs/probe")
    json_path, png_path = write_probe(result, out)
    print(f"Wrote {json_path} and {png_path}")
    return 0
