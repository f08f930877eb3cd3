"""The ``OUTPUT.parts/`` folder: the job file, one ``.npz`` file per finished shard, resuming.

:func:`prepare` creates the folder or checks that its shards are this job's (``job.json``
matches the job's identity: then they resume; another job's are refused, or discarded with
``--overwrite``). :func:`write_shard` saves a shard under a temporary name and renames it,
so a killed run leaves whole shards only; :func:`read_shard` gives a finished shard back, or
None when it is missing or damaged (then it is encoded again). Every process writes its
shards here; the main process alone creates and removes the folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lastlayer.artifact import atomic_path
from lastlayer.inference.embed.plan import EmbedError, EmbedJob

log = logging.getLogger(__package__)  # "lastlayer.inference.embed", for the whole job

JOB_FILE = "job.json"


class ProcessState(Protocol):
    """The part of ``accelerate.PartialState`` that splitting the work needs."""

    process_index: int
    num_processes: int
    is_main_process: bool

    def wait_for_everyone(self) -> None: ...


def prepare(job: EmbedJob, state: ProcessState) -> None:
    """Create the parts folder, or check that its shards are this job's (then they resume)."""
    saved = _saved_identity(job.parts)
    if saved is not None and saved != job.identity and not job.overwrite:
        changed = sorted(k for k in {*saved, *job.identity} if saved.get(k) != job.identity.get(k))
        raise EmbedError(
            f"{job.parts} holds the shards of another embedding job (it differs in: "
            f"{', '.join(changed) or 'the job file'}). Rerun with the same corpus and settings "
            "to resume it, pass --overwrite to discard it and start over, or delete it."
        )
    state.wait_for_everyone()  # everyone has looked before the main process changes anything
    if state.is_main_process:
        if saved != job.identity and job.parts.exists():
            _discard(job.parts)
        job.parts.mkdir(parents=True, exist_ok=True)
        if saved != job.identity:
            write_atomic(job.parts / JOB_FILE,
                         lambda f: f.write(json.dumps(job.identity, indent=2).encode()))
    state.wait_for_everyone()


def _saved_identity(parts: Path) -> dict | None:
    """The job file of an existing parts folder; None when there is no folder or no
    readable job file (shards of an unknown job: they are discarded).

    Raises:
        EmbedError: The folder exists but is not a parts folder of ``lastlayer embed``.
    """
    if not parts.exists():
        return None
    if not parts.is_dir() or any(not _is_ours(p.name) for p in parts.iterdir()):
        raise EmbedError(f"{parts} exists and is not a work folder of lastlayer embed; move it "
                         "away, or choose another output name.")
    try:
        saved = json.loads((parts / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # interrupted before the job file was written: start over
        return None
    return saved if isinstance(saved, dict) else None


def _is_ours(name: str) -> bool:
    return name.startswith(("shard-", JOB_FILE, "assembling"))


def _discard(parts: Path) -> None:
    log.warning("Discarding %s (the parts of another job, or incomplete).", parts)
    shutil.rmtree(parts)


def write_shard(path: Path, vectors: np.ndarray, names: list[str | None]) -> None:
    """A finished shard: its vectors and each row's adapter (empty: the base), atomically."""
    adapters = np.array(["" if n is None else n for n in names], dtype=str)
    with kept_on_failure(path, path.parent):
        write_atomic(path, lambda f: np.savez(f, vectors=vectors, adapters=adapters))


@contextlib.contextmanager
def kept_on_failure(path: Path, parts: Path) -> Iterator[None]:
    """A failing write (a full disk, a quota) is an :class:`EmbedError` that says the
    finished shards are kept: nothing half-written is left under ``path``'s name."""
    try:
        yield
    except OSError as err:
        raise EmbedError(
            f"could not write {path}: {err.strerror or err}; the finished shards are kept in "
            f"{parts}: free space (or fix the folder) and run the same command again to "
            "resume.") from err


def read_shard(path: Path, rows: int) -> tuple[np.ndarray, list[str | None]] | None:
    """A finished shard's vectors and adapter names, or None when it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            vectors, adapters = data["vectors"], data["adapters"]
    except Exception as err:  # a truncated or garbled file fails in many ways: redo it
        log.warning("%s is damaged (%s); embedding it again.", path.name, err)
        return None
    if (vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != rows
            or adapters.shape != (rows,)):
        log.warning("%s holds %s vectors, expected %d; embedding it again.", path.name,
                    vectors.shape, rows)
        return None
    return vectors, [name or None for name in adapters.tolist()]


def shards(job: EmbedJob) -> Iterator[tuple[range, np.ndarray, list[str | None]]]:
    """Every shard in order, checked: all processes must have finished theirs."""
    dim = None
    for shard in range(job.num_shards):
        rows = job.rows(shard)
        found = read_shard(job.shard_path(shard), len(rows))
        if found is None:
            raise RuntimeError(f"{job.shard_path(shard)} is missing or damaged after every "
                               "process finished; run the same command again to redo it.")
        vectors, names = found
        if dim is not None and vectors.shape[1] != dim:
            raise RuntimeError(f"{job.shard_path(shard)} holds {vectors.shape[1]}-d vectors, "
                               f"the others {dim}-d; delete {job.parts} and start over.")
        dim = vectors.shape[1]
        yield rows, vectors, names


def write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """Write a file under a temporary name, then rename it: readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
