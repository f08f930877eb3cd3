"""Hub ids of adapters: ``ORG/NAME[@REVISION]``, resolved to a local folder (pulled).

:func:`resolve_adapter` is the one resolver every command uses: a local folder when the
path exists, else a Hub id (``@REVISION`` pins a branch, tag or commit) fetched with
``huggingface_hub.snapshot_download`` into the standard Hugging Face cache, only the
artifact's own files (:data:`lastlayer.artifact.FILES`: safetensors weights, JSON, YAML,
the card; never pickles or code). ``HF_HUB_OFFLINE=1`` and an unreachable Hub use the
cache; what is not cached fails at once with one line. :func:`adapter_folder` is its
lenient form for commands that also take base models (``eval``, ``probe``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lastlayer import artifact
from lastlayer.artifact import ArtifactError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class HubError(ArtifactError):
    """A Hub adapter cannot be found, fetched or pushed (the message says how to fix it)."""


class NotAnAdapterError(HubError):
    """A Hub repo exists but holds no lastlayer artifact."""

    def __init__(self, message: str, peft: bool = False) -> None:
        super().__init__(message)
        self.peft = peft  # it holds a PEFT adapter, just not a lastlayer one


@dataclass(frozen=True)
class HubRef:
    """A Hub adapter: ``repo_id`` and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_ref(spec: str | os.PathLike) -> HubRef | None:
    """``ORG/NAME`` or ``ORG/NAME@REVISION`` -> :class:`HubRef`; None for anything else.

    Only ids with a namespace count: an adapter always lives under a user or organisation.
    """
    repo_id, sep, revision = str(spec).partition("@")
    if (sep and not revision) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id \
            or "--" in repo_id or repo_id.endswith((".", "-")) or len(repo_id) > 96:
        return None
    return HubRef(repo_id, revision or None)


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _snapshot(ref: HubRef) -> Path:
    """The cached snapshot of ``ref`` with the artifact's files, downloading what is missing.

    Raises:
        HubError: Not cached and the Hub is off or unreachable; no such repo or revision
            (or private / gated without a token); an incomplete cached snapshot.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from lastlayer._version import __version__

    try:
        folder = snapshot_download(
            ref.repo_id, revision=ref.revision, allow_patterns=list(artifact.FILES),
            library_name="lastlayer", library_version=__version__,
        )
    except LocalEntryNotFoundError as err:
        if is_offline():
            why, fix = "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download it once"
        else:
            why = f"the Hub cannot be reached ({type(err.__cause__ or err).__name__})"
            fix = "connect once to download it"
        raise HubError(f"{ref}: not in the Hugging Face cache ({hub_cache()}) and {why}: "
                       f"{fix}, or give a local folder.") from None
    except RevisionNotFoundError:
        raise HubError(f"{ref}: the Hub repo {ref.repo_id} has no revision "
                       f"{ref.revision!r} (a branch, tag or commit).") from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise HubError(f"{ref}: no such Hub repo, or it is private or gated: check the id, and "
                       "log in (`hf auth login`, or set HF_TOKEN) if it is yours.") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise HubError(f"{ref}: the Hub answered HTTP {status}; try again later, or use a "
                       "cached revision with HF_HUB_OFFLINE=1.") from None
    except OSError as err:  # IncompleteSnapshotError and file-system errors
        raise HubError(f"{ref}: cannot use its cached snapshot ({err})") from None
    return Path(folder)


def _check_snapshot(folder: Path, ref: HubRef) -> None:
    """Raise :class:`NotAnAdapterError` unless the snapshot holds ``lastlayer.json``."""
    if artifact.is_artifact(folder):
        return
    if (folder / artifact.PEFT_CONFIG).is_file():
        raise NotAnAdapterError(
            f"{ref} holds a PEFT adapter but not a lastlayer one (no {artifact.METADATA}, so "
            "nothing says which base, pooling and layers it needs): load it with peft "
            "directly.", peft=True)
    raise NotAnAdapterError(
        f"{ref} is not a lastlayer adapter: the Hub repo has no {artifact.METADATA}"
        + (" in the cached snapshot" if is_offline() else "")
        + ". Give the id of a repo that `lastlayer push` wrote, or a local artifact folder.")


def resolve_adapter(spec: str | os.PathLike) -> Path:
    """The local folder of an adapter given as a folder or as ``ORG/NAME[@REVISION]``.

    A path that exists, or that is not shaped like a Hub id, is returned as a path (the
    caller validates it with :func:`lastlayer.artifact.read`); anything else is read as a
    Hub id and its artifact files are fetched through the Hugging Face cache (honouring
    ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_ENDPOINT``).

    Raises:
        HubError: The Hub id cannot be fetched (not cached offline, no such repo or
            revision, ...).
        NotAnAdapterError: The Hub repo holds no lastlayer artifact.
    """
    path = Path(spec).expanduser()
    ref = None if path.exists() else parse_ref(spec)
    if ref is None:  # a folder; one that does not exist fails in artifact.read, named
        return path
    folder = _snapshot(ref)
    _check_snapshot(folder, ref)
    return folder


def adapter_folder(spec: str | os.PathLike) -> Path | None:
    """The local artifact folder ``spec`` names, or None when it names a base model.

    For commands that take an adapter or a base model (``eval``, ``probe``): an existing
    folder counts when it holds ``lastlayer.json``; a Hub id when its repo (or its cached
    snapshot, offline) does. A Hub id that cannot be fetched or holds no artifact is left
    to the base-model loader, which knows the packaged offline copies.

    Raises:
        NotAnAdapterError: The Hub repo holds a PEFT adapter that is not a lastlayer one.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path if artifact.is_artifact(path) else None
    if parse_ref(spec) is None:
        return None
    try:
        return resolve_adapter(spec)
    except NotAnAdapterError as err:
        if err.peft:
            raise
        return None
    except HubError:
        return None


def split_revision(spec: str) -> tuple[str, str | None]:
    """``ORG/NAME@REVISION`` -> ``(ORG/NAME, REVISION)``; anything else -> ``(spec, None)``."""
    ref = parse_ref(spec)
    return (ref.repo_id, ref.revision) if ref and ref.revision else (str(spec), None)
