"""The evaluation protocol of ``lastlayer eval`` and ``lastlayer probe``: one rule for both.

An adapter's ``eval.json`` was measured with its recipe's ``eval`` section (data, sample
size, k, metric, fields) and seed. Both commands take each of these settings from the
command line when given, else from the adapter's saved recipe, else from the recipe
defaults (:class:`~lastlayer.config.EvalConfig`, :class:`~lastlayer.config.Recipe`): so
``lastlayer eval ADAPTER --data EVAL_DATA`` gives the adapted kNN of ``eval.json``, and
``lastlayer probe ADAPTER`` measures every layer on the same documents the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lastlayer import artifact
from lastlayer.config import EvalConfig, Recipe, load_recipe


@dataclass(frozen=True)
class Protocol:
    """What to measure on and how (``data``: the adapter's eval data, None for a base)."""

    data: str | None
    k: int
    metric: str
    max_docs: int | None
    seed: int
    text_field: str
    label_field: str


def resolve_protocol(args: Any, folder: Path | None, max_docs: int | None) -> Protocol:
    """Each setting from ``args`` when given (not None), else the adapter's recipe, else the
    default.

    Args:
        args: The command's options (fields ``k``, ``metric``, ``max_docs``, ``seed``,
            ``text_field``, ``label_field``; None = not given).
        folder: The adapter artifact (a Hub adapter: its cached snapshot), or None for a
            base model.
        max_docs: The sample size when neither the command line nor a recipe sets one
            (None: every document).

    Raises:
        ArtifactError: ``folder`` is a damaged artifact.
        ConfigError: Its saved recipe is invalid.
    """
    saved = saved_protocol(folder)
    fallback = {"k": EvalConfig.k, "metric": EvalConfig.metric, "max_docs": max_docs,
                "seed": Recipe.seed, "text_field": EvalConfig.text_field,
                "label_field": EvalConfig.label_field}
    chosen = {name: given if (given := getattr(args, name)) is not None
              else saved.get(name, default) for name, default in fallback.items()}
    return Protocol(data=saved.get("data"), **chosen)


def saved_protocol(folder: Path | None) -> dict[str, Any]:
    """An adapter's eval settings (data, max_docs, seed, k, metric, fields) from its saved
    recipe, if any (``folder``: the artifact, or None for a base model)."""
    if folder is None or not artifact.is_artifact(folder):
        return {}
    artifact.read(folder)  # a damaged artifact is reported as such, before its recipe
    recipe_file = Path(folder) / "recipe.yaml"
    if not recipe_file.is_file():
        return {}
    recipe = load_recipe(recipe_file)
    return {"data": recipe.eval.data, "max_docs": recipe.eval.max_docs, "seed": recipe.seed,
            "k": recipe.eval.k, "metric": recipe.eval.metric,
            "text_field": recipe.eval.text_field, "label_field": recipe.eval.label_field}
