"""Run ``lastlayer embed`` (the real command line) with ``PlainEmbedder`` as the Embedder.

Used by ``tests/inference/test_embed.py``, alone or under ``torchrun --nproc_per_node 2``,
with ``helpers.processes.child_env``'s ``PYTHONPATH``::

    python -m helpers.embed_worker CALLS embed --model ... --output ...

Each process writes the texts of its encode calls to ``CALLS.<rank>.json``, so the test
can see which process embedded which shard. ``LASTLAYER_TEST_KILL_AT=<point>:<n>`` (read
here only) SIGKILLs the process at the ``n``-th shard: ``written`` just after the shard's
file is in place, ``writing`` with half of its bytes in the temporary file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

import lastlayer.inference
import lastlayer.inference.embed.parts as parts
from helpers.plain_embedder import PlainEmbedder
from lastlayer.cli import main


def arm_kill(kill_at: str) -> None:
    """SIGKILL this process at the chosen shard write (see the module docstring)."""
    point, _, nth = kill_at.partition(":")
    if not point:
        return
    count, write_shard, write_atomic = [0], parts.write_shard, parts.write_atomic

    def shard(path, vectors, names):
        count[0] += 1
        write_shard(path, vectors, names)
        if point == "written" and count[0] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)

    def atomic(path, write):
        if point != "writing" or count[0] != int(nth):
            return write_atomic(path, write)

        def half(f):
            write(f)
            f.truncate(f.tell() // 2)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return write_atomic(path, half)

    parts.write_shard, parts.write_atomic = shard, atomic


def run() -> int:
    torch.set_num_threads(1)  # the same arithmetic in every process and in the test
    arm_kill(os.environ.get("LASTLAYER_TEST_KILL_AT", ""))
    lastlayer.inference.Embedder = PlainEmbedder
    calls_file, argv = sys.argv[1], sys.argv[2:]
    status = main(argv)
    calls = [call for embedder in PlainEmbedder.instances for call in embedder.calls]
    rank = os.environ.get("RANK", "0")
    Path(f"{calls_file}.{rank}.json").write_text(json.dumps(calls), encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(run())
