"""Which adapters the server may serve: every artifact under ``--adapters`` (by its artifact
name, indexed from each folder's metadata: with ``--adapter-memory`` no head is built at
start), and runtime additions (``POST /v1/adapters``, off unless ``--allow-adapter-updates``)
only from inside that folder, after following every symlink."""

from __future__ import annotations

import logging
from pathlib import Path

from lastlayer import artifact
from lastlayer.artifact import ArtifactMeta
from lastlayer.config.commands import ServeSettings
from lastlayer.inference.embedder import BaseMismatchError, Embedder
from lastlayer.inference.server.errors import APIError


def find_adapters(root: str | Path) -> dict[str, Path]:
    """Every artifact folder under ``root`` by its artifact name.

    Raises:
        ValueError: Two artifacts have the same name.
    """
    return {name: folder for name, (folder, _) in index_adapters(root).items()}


def index_adapters(root: str | Path) -> dict[str, tuple[Path, ArtifactMeta]]:
    """Every artifact folder under ``root`` by its artifact name, with its metadata (read
    and checked once: ``lastlayer.json``, the PEFT config and the weights' header).

    Raises:
        ValueError: Two artifacts have the same name.
    """
    found: dict[str, tuple[Path, ArtifactMeta]] = {}
    for meta_file in sorted(Path(root).rglob(artifact.METADATA)):
        folder = meta_file.parent
        if not artifact.is_artifact(folder):
            continue
        meta = artifact.read(folder)
        if meta.name in found:
            raise ValueError(f"two adapters under {root} are named {meta.name!r}: "
                             f"{found[meta.name][0]} and {folder}; load one with --adapter "
                             "NAME=PATH under another name.")
        found[meta.name] = (folder, meta)
    return found


def load_adapters(embedder: Embedder, found: dict[str, tuple[Path, ArtifactMeta]],
                  named: dict[str, str]) -> None:
    """Load (with ``adapter_memory``: register) the ``--adapters`` index and the
    ``--adapter NAME=PATH`` ones; an indexed adapter of another base is skipped, logged.

    Raises:
        ValueError: A ``--adapter`` that cannot be loaded (the message names it).
    """
    for name, (path, meta) in found.items():
        try:
            embedder.load(path, name, meta=meta)
        except BaseMismatchError as err:  # a shared folder may hold other bases' adapters
            logging.getLogger("lastlayer").warning("skipping %s: %s", path, err)
    for name, path in named.items():
        try:
            embedder.load(path, name)
        except ValueError as err:
            raise ValueError(f"--adapter {name}={path}: {err}") from err


def check_updates(settings: ServeSettings) -> None:
    if not settings.allow_adapter_updates:
        raise APIError(403, "adapters cannot be added or removed at runtime: start the server "
                       "with --allow-adapter-updates (and --adapters DIR).", "permission_error",
                       code="updates_disabled")


def allowed_path(given: str, root: Path | None) -> Path:
    """``given`` (absolute, or relative to ``root``) resolved, if it lies under ``root``
    after following every symlink; 403 otherwise, 400 if it does not exist."""
    if root is None:
        raise APIError(403, "runtime adapters come only from the --adapters directory, and "
                       "none was given.", "permission_error", param="path",
                       code="path_not_allowed")
    base = Path(root).resolve()
    try:
        path = (base / given).resolve()  # an absolute `given` replaces base
    except (ValueError, OSError) as err:  # a NUL byte (found by the fuzzer: it was a 500)
        raise APIError(400, f"the path is not a usable file name: {err}.", param="path",
                       code="invalid_adapter") from err
    if not path.is_relative_to(base):
        raise APIError(403, f"{given!r} is outside the adapters directory; only artifacts "
                       "under it can be loaded.", "permission_error", param="path",
                       code="path_not_allowed")
    try:
        found = path.is_dir() and artifact.is_artifact(path)
    except (ValueError, OSError):  # a name too long for the file system, ...
        found = False
    if not found:
        raise APIError(400, f"{given!r} is not an adapter artifact folder under the adapters "
                       "directory.", param="path", code="invalid_adapter")
    return path
