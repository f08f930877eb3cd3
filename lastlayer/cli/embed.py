"""``lastlayer embed``: a corpus file -> vectors with a base model, one adapter or routed
adapters (see :mod:`lastlayer.inference.embed`: shards, resuming, many processes)."""

from __future__ import annotations

from pathlib import Path

from lastlayer.cli.logs import setup_logging
from lastlayer.config.commands import EmbedOptions as Options

HELP = ("Embed a corpus file with a base model, one adapter or routed adapters, into .npy, "
        ".parquet or .jsonl; in shards, so an interrupted run resumes.")
EXAMPLES = """examples:
  lastlayer embed --model sentence-transformers/all-MiniLM-L6-v2 --input docs.jsonl \\
      --output base.npy
  lastlayer embed --model BASE --adapter med=adapters/medical/ART --adapter-for-all med \\
      --input docs.jsonl --output med.parquet
  lastlayer embed --model BASE --adapter med=A1 --adapter news=A2 --route \\
      --input docs.csv --output routed.jsonl        # the adapter column says which
  lastlayer embed --model BASE --adapter med=acme/minilm-medical@v1 --adapter-for-all med \\
      --input docs.jsonl --output med.npy           # an adapter on the Hub, pinned
  torchrun --nproc_per_node 4 -m lastlayer embed ...   # each process takes every 4th shard
  (an interrupted run resumes: run the same command again)"""


def run(args: Options) -> int:
    """Resolve the adapters, then run the (resumable) embedding job."""
    from lastlayer.core.precision import AUTO, inference_dtype
    from lastlayer.hub import resolve_adapter
    from lastlayer.inference.embed import embed_file, parse_adapters

    # Hub ids -> their cached snapshots, before the model loads; the snapshot path (with its
    # commit) is what the job records, so a moved branch does not mix into a resumed job.
    adapters = {name: spec if Path(spec).expanduser().exists() else str(resolve_adapter(spec))
                for name, spec in parse_adapters(args.adapter).items()}

    def load(device):
        from lastlayer.inference import Embedder

        embedder = Embedder(args.model, device=device, dtype=args.dtype,
                            quantization=args.quantization,
                            **({"quantize": args.quantize} if args.quantize else {}))
        for name, path in adapters.items():
            embedder.load(path, name=name)
        return embedder

    setup_logging()
    # auto decides per machine: the job records what it means here (a resume elsewhere
    # that would compute in another precision is then refused, not mixed in)
    dtype = (inference_dtype(AUTO, "cpu" if args.cpu else None)
             if args.dtype in (None, AUTO) else args.dtype)  # None: the Embedder's auto
    embed_file(  # the main process logs where it wrote the output
        args.input, args.output, load, adapters=adapters, adapter=args.adapter_for_all,
        route=args.route, text_field=args.text_field, id_field=args.id_field,
        shard_size=args.shard_size, batch_size=args.batch_size, overwrite=args.overwrite,
        cpu=args.cpu, progress=not args.no_progress,
        settings={"model": args.model, "dtype": dtype, "quantization": args.quantization,
                  **({"quantize": args.quantize} if args.quantize else {})},
    )
    return 0
