"""``lastlayer train`` in a process that SIGKILLs itself at a chosen point (tests only).

``python tests/train_worker.py RECIPE [OVERRIDES...]`` runs ``lastlayer.cli.main(["train",
...])``; :func:`train_in_child` does the same in a forked child of the test process (no
second start-up of torch). ``LASTLAYER_TEST_KILL_AT=<point>:<n>`` (read here and nowhere
else; lastlayer has no test hook of its own) kills the process with SIGKILL, as an OOM
killer or a pulled plug would, at the ``n``-th (1-based) time it reaches ``point``:

- ``cache``: a batch of the bottom-layer pass that builds the cached pairs;
- ``step``: an optimizer step, after the backward pass and before the update;
- ``checkpoint``: a checkpoint's file write, with earlier files of that folder written;
- ``save``: the final save, with every file of the artifact written to its temporary
  folder and nothing renamed yet;
- ``swap``: the final save right after its atomic exchange (the new artifact in place, the
  old one in the temporary folder, not yet deleted).
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

import torch

import lastlayer.artifact.atomic as atomic
import lastlayer.core.adapters as adapters
import lastlayer.training.checkpoint as checkpoint
from lastlayer.cli import main
from lastlayer.core.split import BottomRunner

calls: Counter[str] = Counter()
chosen: dict[str, int] = {}


def reached(name: str) -> None:
    """SIGKILL this process at the ``nth`` arrival at the chosen point."""
    calls[name] += 1
    if calls[name] == chosen.get(name):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def wrap(owner, attribute: str, name: str, before: bool = True) -> None:
    """Make ``owner.attribute`` (a function) call :func:`reached` before (or after) it runs."""
    original = getattr(owner, attribute)

    def wrapped(*args, **kwargs):
        if before:
            reached(name)
        result = original(*args, **kwargs)
        if not before:
            reached(name)
        return result

    setattr(owner, attribute, wrapped)


def wrap_final_save() -> None:
    """``save``: after the artifact's files are written; ``swap``: right after the atomic
    exchange that puts the new artifact in the old one's place."""
    original = adapters.write_atomically

    def write_atomically(out_dir, write, overwrite=False, **kwargs):
        def write_then_reach(tmp):
            write(tmp)
            reached("save")
        return original(out_dir, write_then_reach, overwrite, **kwargs)

    adapters.write_atomically = write_atomically
    exchange = atomic._exchange

    def exchange_then_reach(a, b):
        done = exchange(a, b)
        reached("swap")  # the new artifact just took the old one's place
        return done

    atomic._exchange = exchange_then_reach


def install(kill_at: str) -> None:
    """Arm the kill points of this process; ``kill_at`` is ``<point>:<n>``."""
    point, _, nth = kill_at.partition(":")
    chosen[point] = int(nth)
    torch.set_num_threads(1)
    wrap(BottomRunner, "forward", "cache")
    wrap(torch.optim.AdamW, "step", "step")
    wrap(checkpoint, "save_file", "checkpoint")
    wrap_final_save()


def train_in_child(args: list[str], kill_at: str) -> int:
    """Fork; the child arms ``kill_at`` and runs ``lastlayer train ARGS``; return the
    child's wait status (``os.waitpid``). The child never returns into the caller."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 3
        try:
            install(kill_at)
            code = main(["train", *args])
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


if __name__ == "__main__":
    install(os.environ.get("LASTLAYER_TEST_KILL_AT", ":0"))
    sys.exit(main(["train", *sys.argv[1:]]))
