"""``lastlayer serve``: a base model and its adapters over an OpenAI-compatible embeddings
API (``POST /v1/embeddings``), batching across requests (needs ``lastlayer[serve]``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lastlayer.config import ConfigError
from lastlayer.config.commands import ServeOptions as Options

HELP = ("Serve a base model and its adapters over an OpenAI-compatible embeddings API (POST "
        "/v1/embeddings), batching across requests.")
EXAMPLES = """examples:
  lastlayer serve --model sentence-transformers/all-MiniLM-L6-v2 --adapters adapters/medical
  lastlayer serve --model BASE --adapter med=adapters/medical/x --adapter law=ORG/NAME@REV
  LASTLAYER_KEY=secret lastlayer serve --model BASE --adapters DIR --api-key-env LASTLAYER_KEY
  lastlayer serve --model BASE --adapters DIR --adapter-memory 2GB --hub-adapters 'acme/*'

then: curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' \\
        -d '{"model": "med", "input": ["chest pain"]}'"""


def _names(adapters) -> str:
    """The adapters for the start-up line: all of a few, a count of many."""
    names = list(adapters)
    if len(names) > 20:
        return ", ".join(names[:10]) + f", ... ({len(names)} in all; GET /v1/models lists them)"
    return ", ".join(names) or "none"


def run(args: Options) -> int:
    """Check the options (before any model loads), load the adapters, serve until stopped."""
    from lastlayer.extras import require

    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require(module, "serve", "lastlayer serve")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable is "
                              "not set or empty; export it with the key clients must send.")
    from lastlayer.inference.embed import parse_adapters

    named = parse_adapters(args.adapter)  # a folder or a Hub id (Embedder.load resolves it)
    if args.adapters and not Path(args.adapters).is_dir():
        raise ConfigError(f"--adapters {args.adapters}: no such directory.")
    from lastlayer.inference.residency import parse_memory
    from lastlayer.inference.server import ServeSettings, serve
    from lastlayer.inference.server.adapters import index_adapters, load_adapters

    try:
        memory = parse_memory(args.adapter_memory)
    except ValueError as err:
        raise ConfigError(f"--adapter-memory: {err}") from err
    try:
        settings = ServeSettings(
            batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
            encode_batch_size=args.encode_batch_size, workers=args.workers,
            max_queue=args.max_queue, max_inputs=args.max_inputs,
            max_body_bytes=args.max_body_bytes, api_key=api_key,
            allow_adapter_updates=args.allow_adapter_updates,
            adapters_dir=Path(args.adapters) if args.adapters else None, model_id=args.model_id,
            hub_allowlist=tuple(args.hub_adapters))
        indexing = time.perf_counter()
        found = index_adapters(args.adapters) if args.adapters else {}
        indexing = time.perf_counter() - indexing
    except ValueError as err:
        raise ConfigError(str(err)) from err
    clashes = sorted(set(found) & set(named))
    if clashes:
        raise ConfigError(f"adapter name(s) {', '.join(clashes)} are both under --adapters and "
                          "given with --adapter: rename one (--adapter OTHER=PATH).")
    from lastlayer.inference import Embedder

    embedder = Embedder(args.model, device=args.device, dtype=args.dtype,
                        max_length=args.max_length, adapter_memory=memory,
                        **({"quantize": args.quantize} if args.quantize else {}))
    start = time.perf_counter() - indexing  # the index's reading counts
    try:
        load_adapters(embedder, found, named)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    print(f"Serving {args.model} with adapters: {_names(embedder.adapters)} on "
          f"http://{args.host}:{args.port}/v1/embeddings", flush=True)
    if memory is not None:
        print(f"Registered {len(embedder.adapters)} adapters in "
              f"{time.perf_counter() - start:.2f} s; their heads load on first use, within "
              f"--adapter-memory {args.adapter_memory} ({memory} bytes)", flush=True)
    try:
        serve(embedder, settings, host=args.host, port=args.port, log_level=args.log_level)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return 0
