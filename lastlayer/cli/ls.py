"""``lastlayer ls``: recipes, trained adapters and the Hub adapters in the Hugging Face
cache, with their held-out kNN results."""

from __future__ import annotations

from pathlib import Path

from lastlayer import artifact
from lastlayer.config import ConfigError
from lastlayer.config.commands import LsOptions as Options

HELP = ("List recipes and trained adapters (also those in the Hugging Face cache) with their "
        "held-out kNN results.")
EXAMPLES = """examples:
  lastlayer ls
  lastlayer ls --root /path/to/project     # and the Hub adapters in the Hugging Face cache"""


def run(args: Options) -> int:
    """Recipes under recipes/, artifacts under adapters/, and the lastlayer adapters in the
    Hugging Face cache (pulled by id)."""
    root = Path(args.root)
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such folder; pass the project folder that holds "
                          "recipes/ and adapters/ (default: the current folder).")
    recipes = sorted((root / "recipes").rglob("*.yaml"))
    print(f"Recipes ({len(recipes)}):")
    for path in recipes:
        print(f"  {path.relative_to(root)}")
    artifacts = sorted(p.parent for p in (root / "adapters").rglob(artifact.METADATA))
    print(f"Adapters ({len(artifacts)}):")
    for folder in artifacts:
        print(f"  {folder.relative_to(root)}  {_artifact_line(folder)}")
    from lastlayer.hub import cached_adapters

    cached = cached_adapters()
    print(f"Hub adapters in the Hugging Face cache ({len(cached)}):")
    for item in cached:
        print(f"  {item.spec}  {_artifact_line(item.folder)}")
    return 0


def _artifact_line(folder: Path) -> str:
    """One artifact's base, kind and held-out kNN; a damaged one says what is wrong."""
    try:
        meta = artifact.read(folder)
        metrics = artifact.read_metrics(folder)
    except artifact.ArtifactError as err:
        return f"DAMAGED: {err}"
    line = f"{meta.base.model} {meta.kind} top-{meta.top_k}"
    if meta.top_k_choice:  # chosen by adapter.top_k: auto
        line += f" (auto: {meta.top_k_choice.signal or '?'})"
    if metrics:
        base, adapted = metrics.base["knn_accuracy"], metrics.adapted["knn_accuracy"]
        line += f"  kNN {base:.3f} -> {adapted:.3f}"
    return line
