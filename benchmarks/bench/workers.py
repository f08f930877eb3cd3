"""One measurement in a fresh Python process, so that its peak memory is its own.

The orchestrating script starts ``python -m benchmarks.NAME --worker SPEC`` (from the
repository root), the worker runs the measurement and prints its JSON result on one line
after a marker; everything else it prints (progress, warnings) is ignored. A worker that
fails or times out gives ``{"error": ...}`` instead, which becomes an error row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from benchmarks.bench import ROOT

RESULT_MARK = "@@BENCHMARK-RESULT@@"


def worker_command(script: str, spec: dict[str, Any]) -> list[str]:
    """``python -m benchmarks.<script> --worker SPEC``.

    A module name, not a file path: a command line that names ``<script>.py`` is easily
    caught by someone else's ``pkill -f`` on a shared machine.
    """
    return [sys.executable, "-m", f"benchmarks.{script}", "--worker", json.dumps(spec)]


def worker_env() -> dict[str, str]:
    """A worker's environment: this one, offline, without tokenizer threads or bars."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                TQDM_DISABLE="1")


def run_worker(spec: dict[str, Any], timeout_s: float | None = None, script: str = "speed",
               mark: str = RESULT_MARK) -> dict[str, Any]:
    """Run ``benchmarks.<script>``'s worker on ``spec`` in a fresh process (from the
    repository root, offline) and return the JSON it prints after ``mark``, or
    ``{"error": ...}``."""
    try:
        proc = subprocess.run(worker_command(script, spec), capture_output=True, text=True,
                              env=worker_env(), timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(mark):
            return json.loads(line[len(mark):])
    tail = (proc.stderr or proc.stdout)[-3000:]
    return {"error": f"worker exited with {proc.returncode}: {tail}"}


def reply(result: dict[str, Any], mark: str = RESULT_MARK) -> None:
    """In a worker: print ``result`` after ``mark``, the line :func:`run_worker` reads."""
    print(mark + json.dumps(result), flush=True)
