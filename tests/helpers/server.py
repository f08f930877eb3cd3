"""``lastlayer serve`` in a subprocess on a free loopback port: started, awaited, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.data import ROOT
from helpers.processes import free_port

KEY = "test-key-not-secret"  # the API key the servers read from $LASTLAYER_KEY


def launch(args: list[str], tmp: Path) -> tuple[subprocess.Popen, str, Path]:
    """``python -m lastlayer serve ARGS`` on a free loopback port (not waited for)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "LASTLAYER_KEY": KEY}
    log = tmp / f"server-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lastlayer", "serve", *args, "--port",
                                 str(port), "--log-level", "warning"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> str:
    """Wait for ``/health`` to answer (the server loads the model first)."""
    import httpx  # the serve tests skip without it; importing this module must not fail

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server drains), then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
