"""Run ``lastlayer embed`` (the real command line) with ``PlainEmbedder`` as the Embedder.

Used by ``tests/inference/test_embed.py``, alone or under ``torchrun --nproc_per_node 2``,
with ``helpers.processes.child_env``'s ``PYTHONPATH``::

    python -m helpers.embed_worker CALLS embed --model ... --output ...

Each process writes the texts of its encode calls to ``CALLS.<rank>.json``, so the test
can see which process embedded which shard.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import lastlayer.inference
from helpers.plain_embedder import PlainEmbedder
from lastlayer.cli import main


def run() -> int:
    torch.set_num_threads(1)  # the same arithmetic in every process and in the test
    lastlayer.inference.Embedder = PlainEmbedder
    calls_file, argv = sys.argv[1], sys.argv[2:]
    status = main(argv)
    calls = [call for embedder in PlainEmbedder.instances for call in embedder.calls]
    rank = os.environ.get("RANK", "0")
    Path(f"{calls_file}.{rank}.json").write_text(json.dumps(calls), encoding="utf-8")
    return status


if __name__ == "__main__":
    sys.exit(run())
