"""Atomic writes, the one way lastlayer replaces a file or a folder.

A reader (another process, a crash, a Hub upload) sees the old content or the new one,
never half of either: the new content is written under a temporary name next to its
destination and moved over it with ``os.replace``, which is atomic on one file system.

- :func:`atomic_path` writes one file (``lastlayer.json``, a routing signature, a shard
  or the output of ``lastlayer embed``);
- :func:`write_text` is its form for a text;
- :func:`replace_folder` swaps a finished folder (an artifact) into place: on Linux with
  one atomic exchange (``renameat2(RENAME_EXCHANGE)``), so a process killed at any point
  leaves the previous folder or the new one under the final name, never neither;
  elsewhere with two renames, and a previous folder a kill left aside between them is put
  back by the next call. Temporary folders a killed call left behind are swept then too.

Every writer of the project uses these; nothing else calls ``os.replace`` on an output.
"""

from __future__ import annotations

import ctypes
import errno
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step; False where the system cannot.

    Linux's ``renameat2(..., RENAME_EXCHANGE)`` (glibc 2.28+, most local file systems);
    Python has no binding for it, hence ctypes.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # this file system (or kernel) has no exchange
    raise OSError(code, os.strerror(code), os.fspath(b))


def _recover(out_dir: Path) -> None:
    """Undo what a killed :func:`replace_folder` left: put a previous folder back if the
    final name is empty, and remove the temporary folders of earlier calls."""
    old = sorted(out_dir.parent.glob(f".{out_dir.name}.old-*"), key=os.path.getmtime)
    if old and not out_dir.exists():
        os.replace(old.pop(), out_dir)
    for stale in [*old, *out_dir.parent.glob(f".{out_dir.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _swap_in(tmp: Path, out_dir: Path, old: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``; a previous ``out_dir`` ends up in ``tmp``
    (exchange) or ``old`` (two renames), for the caller to delete."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
    elif not _exchange(tmp, out_dir):
        os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old, out_dir)  # put the previous folder back before it is deleted
            raise


def replace_folder(
    out_dir: str | Path, write: Callable[[Path], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder, then move it to ``out_dir``.

    ``check(out_dir)``, when given, runs before anything is written and again just before
    the swap (something may have appeared there meanwhile); it raises to refuse. A crash
    mid-write leaves any previous folder at ``out_dir`` untouched; the swap is atomic where
    the system can exchange two paths (see the module docstring).
    """
    out_dir = Path(out_dir)
    if out_dir.parent.is_dir():
        _recover(out_dir)
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
        _swap_in(tmp, out_dir, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir
