"""Running the app under uvicorn: the address, the limits that protect it from slow and broken
clients, and a drained stop on SIGINT / SIGTERM (exit status 0).

The defaults (``host``, ``port``, ``log_level``) are ``ServeOptions``' (config.commands),
the ones ``lastlayer serve`` prints in its help. The connection limits are set here, once:

- ``timeout_keep_alive``: an idle keep-alive connection is closed after
  :data:`KEEP_ALIVE_S` seconds, so a flood of idle connections does not pile up;
- ``limit_concurrency``: beyond :data:`MAX_CONNECTIONS` connections (and tasks) at once,
  uvicorn answers 503 at once instead of accepting work it cannot hold;
- ``h11_max_incomplete_event_size``: a request line and headers larger than
  :data:`MAX_HEADER_BYTES` are refused (431/400) instead of buffered;
- a client that sends half a request and hangs holds only its own connection: uvicorn
  reads asynchronously, the batcher never waits on a client, and the keep-alive timeout
  closes a connection that never starts a request. Bodies are bounded by
  ``--max-body-bytes`` (:mod:`.body`).
"""

from __future__ import annotations

import signal
from dataclasses import fields

from lastlayer.config.commands import ServeOptions, ServeSettings
from lastlayer.inference.embedder import Embedder
from lastlayer.inference.server.app import create_app

KEEP_ALIVE_S = 5  # uvicorn's default, written down: idle connections close after it
MAX_CONNECTIONS = 1024  # open connections and tasks at once; beyond: 503 immediately
MAX_HEADER_BYTES = 64 * 1024  # request line + headers (h11's default is 16 KiB; OpenAI
# clients send a few hundred bytes)

_DEFAULTS = {item.name: item.default for item in fields(ServeOptions)
             if item.name in ("host", "port", "log_level")}


def uvicorn_config(embedder: Embedder, settings: ServeSettings, host: str, port: int,
                   log_level: str, graceful_timeout: float):
    """The ``uvicorn.Config`` of :func:`serve` (its limits: the module docstring)."""
    import uvicorn

    return uvicorn.Config(create_app(embedder, settings), host=host, port=port,
                          log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                          timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, http="h11")


def serve(embedder: Embedder, settings: ServeSettings, host: str = _DEFAULTS["host"],
          port: int = _DEFAULTS["port"], log_level: str = _DEFAULTS["log_level"],
          graceful_timeout: float = 30.0) -> None:
    """Run the app under uvicorn until SIGINT / SIGTERM; requests in flight finish first
    (up to ``graceful_timeout`` seconds), then it returns normally (exit status 0)."""
    import uvicorn

    config = uvicorn_config(embedder, settings, host, port, log_level, graceful_timeout)
    # uvicorn re-raises the signal it stopped on once it has drained, which would kill the
    # process with the default handler; a drained stop is a normal exit.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT,
                                                                       signal.SIGTERM)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
