"""Adapters on the Hugging Face Hub: push an artifact, pull one by ``ORG/NAME[@REVISION]``.

- :func:`resolve_adapter` is the one resolver every command uses: a local folder when the
  path exists, else a Hub id (``@REVISION`` pins a branch, tag or commit) fetched with
  ``huggingface_hub.snapshot_download`` into the standard Hugging Face cache, only the
  artifact's own files (:data:`lastlayer.artifact.FILES`: safetensors weights, JSON, YAML,
  the card; never pickles or code). ``HF_HUB_OFFLINE=1`` and an unreachable Hub use the
  cache; what is not cached fails at once with one line. :func:`adapter_folder` is its
  lenient form for commands that also take base models (``eval``, ``probe``).
- :func:`push` uploads exactly an artifact's files (``create_repo`` + ``upload_folder``)
  with a freshly rendered model card, after refusing any file that would publish a path
  of this machine. The token comes from ``HF_TOKEN`` or ``hf auth login``; lastlayer never
  prints or logs it.
- :func:`cached_adapters` lists the lastlayer adapters in the Hugging Face cache
  (``lastlayer ls``).

Like :mod:`lastlayer.artifact`, this module imports no torch; ``huggingface_hub`` is
imported when a function runs, so ``lastlayer --help`` stays fast.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
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


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
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
        if _offline():
            why, fix = "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download it once"
        else:
            why = f"the Hub cannot be reached ({type(err.__cause__ or err).__name__})"
            fix = "connect once to download it"
        raise HubError(f"{ref}: not in the Hugging Face cache ({_cache_dir()}) and {why}: "
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
        + (" in the cached snapshot" if _offline() else "")
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


# ---------------------------------------------------------------------------------------
# Push.


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` did.

    Attributes:
        repo_url: The repo's page.
        commit_url: The commit's page.
        commit: The commit id.
        pr_url: The pull request's page (``create_pr``), else None.
        files: The files uploaded, sorted.
    """

    repo_url: str
    commit_url: str
    commit: str
    pr_url: str | None
    files: list[str]


def push(folder: str | os.PathLike, repo_id: str, *, private: bool = False,
         revision: str | None = None, create_pr: bool = False,
         commit_message: str | None = None, endpoint: str | None = None) -> PushResult:
    """Upload an artifact to the Hub repo ``repo_id`` (created if needed).

    Uploads exactly the artifact's own files (:data:`lastlayer.artifact.FILES` present in
    ``folder``), with ``lastlayer.json`` in the current schema and the model card rendered
    again for ``repo_id``; the folder itself is not changed. Artifact files that an earlier
    push left in the repo and this artifact lacks are deleted in the same commit.

    Args:
        folder: The artifact folder.
        repo_id: ``ORG/NAME``.
        private: Create the repo private (an existing repo keeps its visibility).
        revision: The branch to commit to (created from the default branch if missing).
        create_pr: Open a pull request against the default branch instead of committing
            (``huggingface_hub`` opens pull requests against the default branch only).
        commit_message: Default: one line naming the adapter.
        endpoint: The Hub's URL (default: ``HF_ENDPOINT`` or huggingface.co).

    Raises:
        ArtifactError: The artifact is damaged, or a file would publish a path of this
            machine.
        HubError: Offline, not logged in, bad id, or the Hub refused (the message says why).
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from lastlayer._version import __version__

    ref = parse_ref(repo_id)
    if ref is None or ref.revision:
        raise HubError(f"{repo_id!r} is not a Hub repo id: give ORG/NAME (the branch goes in "
                       "--revision).")
    if create_pr and revision not in (None, "main"):
        raise HubError("--create-pr opens the pull request against the default branch (as "
                       "huggingface_hub does); drop --revision, or push to the branch without "
                       "--create-pr.")
    meta = artifact.read(folder)
    texts = {artifact.METADATA: meta.to_json(),
             artifact.CARD: artifact.model_card(meta, artifact.read_metrics(folder), repo_id)}
    artifact.check_portable(folder, texts)
    if _offline():
        raise HubError("HF_HUB_OFFLINE is set: pushing needs the Hub. Unset it "
                       "(HF_HUB_OFFLINE=0) and try again.")
    api = HfApi(endpoint=endpoint, library_name="lastlayer", library_version=__version__)
    if get_token() is None:
        raise HubError("not logged in to the Hugging Face Hub: run `hf auth login` or set "
                       "HF_TOKEN to a token with write access, then push again.")
    names = sorted(set(artifact.files(folder)) | set(texts))
    message = commit_message or (f"lastlayer {meta.kind} adapter {meta.name} (top {meta.top_k} "
                                 f"of {meta.base.model})")
    try:
        with tempfile.TemporaryDirectory(prefix="lastlayer-push-") as tmp:
            _stage(Path(folder), Path(tmp), names, texts)
            repo_url = api.create_repo(repo_id, private=True if private else None,
                                       exist_ok=True)
            if revision and revision != "main" and not revision.startswith("refs/"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            stale = [name for name in artifact.FILES if name not in names]
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=message, revision=revision,
                create_pr=create_pr, delete_patterns=stale or None,
            )
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = {401: "log in (`hf auth login`) or set HF_TOKEN",
                403: "the token cannot write to this repo: use a write token, or a namespace "
                     "you belong to"}.get(status, "check the id and try again")
        raise HubError(f"pushing to {repo_id} failed: the Hub answered HTTP {status} "
                       f"({_server_message(err)}); {hint}.") from None
    return PushResult(repo_url=str(repo_url), commit_url=info.commit_url, commit=info.oid,
                      pr_url=info.pr_url, files=names)


def _server_message(err: Exception) -> str:
    """The Hub's own error text (never the request's headers, where the token is)."""
    server = getattr(err, "server_message", None)
    return (server or str(err).splitlines()[0])[:300]


def _stage(folder: Path, stage: Path, names: list[str], texts: dict[str, str]) -> None:
    """Lay out exactly the files to upload: rendered texts, the rest linked or copied."""
    for name in names:
        target = stage / name
        if name in texts:
            target.write_text(texts[name], encoding="utf-8")
            continue
        try:
            os.link(folder / name, target)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(folder / name, target)


# ---------------------------------------------------------------------------------------
# The cache.


@dataclass(frozen=True)
class CachedAdapter:
    """A lastlayer adapter in the Hugging Face cache: one snapshot of one repo."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]
    folder: Path

    @property
    def spec(self) -> str:
        """How to load exactly this snapshot: ``ORG/NAME@REF`` (or ``@COMMIT``)."""
        return f"{self.repo_id}@{self.refs[0] if self.refs else self.commit}"


def cached_adapters(cache_dir: str | os.PathLike | None = None) -> list[CachedAdapter]:
    """Every snapshot in the Hugging Face cache that holds ``lastlayer.json``, sorted."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir or _cache_dir())  # the cache in use now
    except CacheNotFound:
        return []
    found = [
        CachedAdapter(repo.repo_id, rev.commit_hash, tuple(sorted(rev.refs)),
                      Path(rev.snapshot_path))
        for repo in info.repos if repo.repo_type == "model"
        for rev in repo.revisions if artifact.is_artifact(rev.snapshot_path)
    ]
    return sorted(found, key=lambda a: (a.repo_id, a.refs == (), a.refs, a.commit))
