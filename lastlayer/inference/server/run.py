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
- :data:`HEAD_TIMEOUT_S`: a connection that has not sent a whole request line and headers
  this long after it opened (or after its last answer) is closed. uvicorn has no such
  timeout: its keep-alive timer stops at the first byte, so a client that connects and
  sends nothing, or half a header, held its connection (and a ``limit_concurrency`` slot)
  forever, and a graceful stop waited on it. :class:`HeadDeadlineProtocol` adds it;
- a body that stops arriving is answered 408 after ``body.BODY_TIMEOUT_S``
  (:class:`~lastlayer.inference.server.body.BodyDeadline`); bodies are bounded by
  ``--max-body-bytes``. The batcher never waits on a client: one that disconnects
  mid-response loses only its own answer.
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

HEAD_TIMEOUT_S = 10.0  # request line + headers must arrive within this


def _protocol():
    """uvicorn's h11 protocol with a deadline for the request head (the module docstring)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadlineProtocol(H11Protocol):
        """Closes a connection whose request head is not complete :data:`HEAD_TIMEOUT_S`
        seconds after it opened or after its last answer."""

        _head_timer = None

        def connection_made(self, transport) -> None:  # noqa: ANN001 (asyncio's signature)
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_expired)

        def _head_expired(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete  # no request read
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol


_DEFAULTS = {item.name: item.default for item in fields(ServeOptions)
             if item.name in ("host", "port", "log_level")}


def uvicorn_config(embedder: Embedder, settings: ServeSettings, host: str, port: int,
                   log_level: str, graceful_timeout: float):
    """The ``uvicorn.Config`` of :func:`serve` (its limits: the module docstring)."""
    import uvicorn

    return uvicorn.Config(create_app(embedder, settings), host=host, port=port,
                          log_level=log_level, timeout_graceful_shutdown=graceful_timeout,
                          timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, http=_protocol())


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
