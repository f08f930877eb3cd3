"""``lastlayer push``: upload exactly an artifact's files to a Hub repo.

:func:`push` uploads the artifact's own files (``create_repo`` + ``upload_folder``) with a
freshly rendered model card, after refusing any file that would publish a path of this
machine. The token comes from ``HF_TOKEN`` or ``hf auth login``; lastlayer never prints or
logs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lastlayer import artifact
from lastlayer.hub.card import model_card
from lastlayer.hub.refs import HubError, is_offline, parse_ref


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
             artifact.CARD: model_card(meta, artifact.read_metrics(folder), repo_id)}
    artifact.check_portable(folder, texts)
    if is_offline():
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
    """The Hub's own error text (never the request's headers, where the token is), with
    the token masked should a server echo it back."""
    from huggingface_hub import get_token

    server = getattr(err, "server_message", None)
    text, token = server or str(err).splitlines()[0], get_token()
    return (text.replace(token, "hf_***") if token else text)[:300]


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
