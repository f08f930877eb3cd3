"""``lastlayer serve``: a base model and its adapters over an OpenAI-compatible embeddings
API (``POST /v1/embeddings``), batching across requests (needs ``lastlayer[serve]``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lastlayer.config import ConfigError
from lastlayer.config.commands import ServeOptions as Options

HELP = ("Serve a base model and its adapters over an OpenAI-compatible embeddings API (POST "
        "/v1/embeddings), batching across requests.")
EXAMPLES = """examples:
  lastlayer serve --model sentence-transformers/all-MiniLM-L6-v2 --adapters adapters/medical
  lastlayer serve --model BASE --adapter med=adapters/medical/x --adapter law=ORG/NAME@REV
  LASTLAYER_KEY=secret lastlayer serve --model BASE --adapters DIR --api-key-env LASTLAYER_KEY

then: curl localhost:8000/v1/embeddings -H 'Content-Type: application/json' \\
        -d '{"model": "med", "input": ["chest pain"]}'"""


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
    from lastlayer.inference.server import ServeSettings, find_adapters, serve

    try:
        settings = ServeSettings(
            batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
            max_queue=args.max_queue, max_inputs=args.max_inputs,
            max_body_bytes=args.max_body_bytes, api_key=api_key,
            allow_adapter_updates=args.allow_adapter_updates,
            adapters_dir=Path(args.adapters) if args.adapters else None, model_id=args.model_id)
        found = find_adapters(args.adapters) if args.adapters else {}
    except ValueError as err:
        raise ConfigError(str(err)) from err
    clashes = sorted(set(found) & set(named))
    if clashes:
        raise ConfigError(f"adapter name(s) {', '.join(clashes)} are both under --adapters and "
                          "given with --adapter: rename one (--adapter OTHER=PATH).")
    from lastlayer.inference import BaseMismatchError, Embedder

    embedder = Embedder(args.model, device=args.device, dtype=args.dtype,
                        max_length=args.max_length,
                        **({"quantize": args.quantize} if args.quantize else {}))
    for name, path in found.items():
        try:
            embedder.load(path, name)
        except BaseMismatchError as err:  # a shared folder may hold other bases' adapters
            logging.getLogger("lastlayer").warning("skipping %s: %s", path, err)
    for name, path in named.items():
        try:
            embedder.load(path, name)
        except ValueError as err:
            raise ConfigError(f"--adapter {name}={path}: {err}") from err
    names = ", ".join(embedder.adapters) or "none"
    print(f"Serving {args.model} with adapters: {names} on http://{args.host}:{args.port}"
          "/v1/embeddings", flush=True)
    try:
        serve(embedder, settings, host=args.host, port=args.port, log_level=args.log_level)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return 0
