"""uvicorn's ``limit_concurrency`` as ``lastlayer serve`` runs it: past the limit of open
connections a request is answered 503 at once (never queued, never hung), and once the
connections close the server answers again by itself. A real server subprocess, its limit
lowered from 1024 to 8 by a one-line launcher so the test holds only 8 sockets."""

from __future__ import annotations

import signal
import socket
import sys
import time

import pytest
from helpers.artifacts import MAX_LENGTH

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from benchmarks.soak import start_server  # noqa: E402

pytestmark = pytest.mark.serve

LIMIT = 8
LAUNCHER = ("import sys; from lastlayer.inference.server import run; "
            f"run.MAX_CONNECTIONS = {LIMIT}; from lastlayer.cli import main; "
            "sys.exit(main(sys.argv[1:]))")  # then: serve ...


def _embed(url: str) -> httpx.Response:
    base = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    return httpx.post(f"{url}/v1/embeddings", json={"model": base, "input": ["chest pain"]},
                      timeout=10)


def test_past_limit_concurrency_a_request_gets_503_at_once_then_the_server_recovers(
        saved_models, tmp_path):
    proc, url = start_server(str(saved_models["bert"]), {}, [], tmp_path / "server.log",
                             MAX_LENGTH, launcher=[sys.executable, "-c", LAUNCHER])
    port = int(url.rsplit(":", 1)[1])
    try:
        assert _embed(url).status_code == 200
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(LIMIT)]
        time.sleep(0.5)  # let the server accept them all
        started = time.monotonic()
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": ["chest pain"]}, timeout=10)
        assert refused.status_code == 503, refused.text
        assert time.monotonic() - started < 5  # answered at once, not after the held ones
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 10
        while (answer := _embed(url)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer.status_code == 200 and len(answer.json()["data"]) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
