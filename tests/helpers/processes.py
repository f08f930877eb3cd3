"""Subprocesses of the tests: free loopback ports, a worker's environment, torchrun.

Workers run as modules (``python -m helpers.<name>``), never by file path, so that they
import ``helpers`` and this checkout's ``lastlayer`` as the tests do, from any folder.
"""

from __future__ import annotations

import os
import socket
import sys

from helpers.data import ROOT, TESTS

# This checkout's lastlayer (ahead of any other installed copy), then the helpers package.
PYTHONPATH = os.pathsep.join([str(ROOT), str(TESTS)])
# Launcher variables a surrounding torchrun would leave behind; the children set their own.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


def free_port() -> int:
    """A loopback port nothing listens on now (another process may take it meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a worker: no launcher variables, one thread, the
    ``PYTHONPATH`` that finds lastlayer and ``helpers``, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=PYTHONPATH, **extra)
    return env


def launcher(processes: int) -> list[str]:
    """The command line that starts ``processes`` Python processes of what follows it:
    ``torchrun --nproc_per_node N`` on a free loopback port, or plain ``python`` for 1."""
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
