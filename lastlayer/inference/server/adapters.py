"""Which adapters the server may serve: every artifact under ``--adapters`` (by its artifact
name), and runtime additions (``POST /v1/adapters``, off unless ``--allow-adapter-updates``)
only from inside that folder, after following every symlink."""

from __future__ import annotations

from pathlib import Path

from lastlayer import artifact
from lastlayer.config.commands import ServeSettings
from lastlayer.inference.server.errors import APIError


def find_adapters(root: str | Path) -> dict[str, Path]:
    """Every artifact folder under ``root`` by its artifact name.

    Raises:
        ValueError: Two artifacts have the same name.
    """
    found: dict[str, Path] = {}
    for meta_file in sorted(Path(root).rglob(artifact.METADATA)):
        folder = meta_file.parent
        if not artifact.is_artifact(folder):
            continue
        name = artifact.read(folder).name
        if name in found:
            raise ValueError(f"two adapters under {root} are named {name!r}: {found[name]} and "
                             f"{folder}; load one with --adapter NAME=PATH under another name.")
        found[name] = folder
    return found


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
