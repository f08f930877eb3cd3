"""Atomic writes, the one way lastlayer replaces a file or a folder.

A reader (another process, a crash, a Hub upload) sees the old content or the new one,
never half of either: the new content is written under a temporary name next to its
destination and moved over it with ``os.replace``, which is atomic on one file system.

- :func:`atomic_path` writes one file (``lastlayer.json``, a routing signature, a shard
  or the output of ``lastlayer embed``);
- :func:`write_text` is its form for a text;
- :func:`replace_folder` swaps a finished folder (an artifact) into place.

Every writer of the project uses these; nothing else calls ``os.replace`` on an output.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


@contextmanager
def atomic_path(path: str | Path, tmp: str | Path | None = None) -> Iterator[Path]:
    """A temporary path to write; on leaving the block without error it replaces ``path``.

    Args:
        path: The file to write (its folder is created if needed).
        tmp: Where to write first (same file system as ``path``); default
            ``<path>.tmp-<random>`` beside it, a name starting like the file's own.

    The temporary file is removed whatever happens; on an error ``path`` is left as it was.
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f"{path.name}.tmp-{_suffix()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace_folder(
    out_dir: str | Path, write: Callable[[Path], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder, then move it to ``out_dir``.

    ``check(out_dir)``, when given, runs before anything is written and again just before
    the swap (something may have appeared there meanwhile); it raises to refuse. A crash
    mid-write leaves any previous folder at ``out_dir`` untouched; the swap itself is two
    renames on one file system (the previous folder is put back if the second fails).
    """
    out_dir = Path(out_dir)
    if check is not None:
        check(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{_suffix()}"
    old = out_dir.parent / f".{out_dir.name}.old-{_suffix()}"
    try:
        tmp.mkdir()
        write(tmp)
        if check is not None:
            check(out_dir)
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            if old.exists():  # put the previous folder back before ``old`` is deleted
                os.replace(old, out_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir
