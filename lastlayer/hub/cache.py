"""The lastlayer adapters in the Hugging Face cache (``lastlayer ls``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lastlayer import artifact
from lastlayer.hub.refs import hub_cache


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
        info = scan_cache_dir(cache_dir or hub_cache())  # the cache in use now
    except CacheNotFound:
        return []
    found = [
        CachedAdapter(repo.repo_id, rev.commit_hash, tuple(sorted(rev.refs)),
                      Path(rev.snapshot_path))
        for repo in info.repos if repo.repo_type == "model"
        for rev in repo.revisions if artifact.is_artifact(rev.snapshot_path)
    ]
    return sorted(found, key=lambda a: (a.repo_id, a.refs == (), a.refs, a.commit))
