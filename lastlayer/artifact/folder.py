"""Artifact folders: is it one, is it whole, may it be replaced, and writing one.

- :func:`is_artifact` answers "is this folder an artifact?" (it holds ``lastlayer.json``);
- :func:`read` validates a folder (metadata, PEFT config, weights header, routing file)
  and returns its :class:`~lastlayer.artifact.ArtifactMeta`; any fault is an
  :class:`~lastlayer.artifact.ArtifactError` naming the file;
- :func:`side_files` renders the text files a new artifact is saved with, and
  :func:`write_atomically` swaps a finished folder into place, refusing to replace
  anything that is not an artifact, and an artifact unless told to;
- :func:`upgrade` rewrites an older artifact's ``lastlayer.json`` and card in the current
  schema.

The model card's text is the Hub package's (:func:`lastlayer.hub.model_card`), above this
one: callers render it and pass it in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lastlayer.artifact.atomic import replace_folder, write_text
from lastlayer.artifact.layout import (
    CARD,
    EVAL,
    FILES,
    METADATA,
    PEFT_CONFIG,
    RECIPE,
    ROUTING,
    TRAIN_LOG,
    WEIGHTS,
    ArtifactError,
)
from lastlayer.artifact.routing_file import read_routing
from lastlayer.artifact.safetensors_check import check_safetensors
from lastlayer.artifact.schema import SCHEMA_VERSION, ArtifactMeta, EvalReport, as_report


def is_artifact(path: str | Path) -> bool:
    """Whether ``path`` is an artifact folder (it holds ``lastlayer.json``).

    A Hub id or a model folder answers False. Says nothing about whether the artifact is
    valid: :func:`read` checks that.
    """
    return (Path(path) / METADATA).is_file()


def read(path: str | Path) -> ArtifactMeta:
    """Validate an artifact folder and return its metadata (schema 1 is migrated in memory).

    Checks ``lastlayer.json`` (JSON, keys, types, schema version), ``adapter_config.json``
    and the header and size of ``adapter_model.safetensors``, so a damaged artifact fails
    here, with the file named, and not deep inside PEFT.

    Raises:
        ArtifactError: The folder is missing, or a file is missing, malformed or truncated,
            or the metadata comes from a newer lastlayer.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not an artifact folder: it does not exist or is "
                            "not a folder.")
    file = folder / METADATA
    if not file.is_file():
        raise ArtifactError(f"{folder} is not a lastlayer artifact: it has no {METADATA}.")
    meta = ArtifactMeta.from_dict(read_json(file), str(file))
    check_peft_files(folder)
    routing = read_routing(folder)
    if routing is not None and routing[1]["layer"] != meta.layers.num_layers - meta.top_k:
        raise ArtifactError(
            f"{folder / ROUTING}: describes the inputs of block {routing[1]['layer']}, but the "
            f"adapter starts at block {meta.layers.num_layers - meta.top_k} (top {meta.top_k} "
            f"of {meta.layers.num_layers}); it belongs to another adapter: delete it."
        )
    return meta


def check_peft_files(folder: str | Path) -> None:
    """Raise :class:`ArtifactError` unless ``folder`` holds a readable PEFT config and whole
    safetensors weights (checked from the header: names, shapes, offsets, file size)."""
    folder = Path(folder)
    config = read_json(folder / PEFT_CONFIG)
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ArtifactError(f"{folder / PEFT_CONFIG}: not a PEFT adapter config (no peft_type).")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{weights}: missing; the artifact has no adapter weights "
                            "(copy the whole folder, or train it again).")
    names = check_safetensors(weights)  # the header, proven sound before any tensor is read
    if not names:
        raise ArtifactError(f"{weights}: holds no tensors.")


def read_json(file: Path) -> Any:
    """A JSON file of an artifact, parsed (errors name the file)."""
    if not file.is_file():
        raise ArtifactError(f"{file}: missing.")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{file}: not valid JSON ({err}).") from None


def read_metrics(path: str | Path) -> EvalReport | None:
    """An artifact's ``eval.json`` (None when absent or when nothing was measured).

    Raises:
        ArtifactError: The file is not JSON, or not an ``eval.json`` this lastlayer reads.
    """
    file = Path(path) / EVAL
    if not file.is_file():
        return None
    metrics = read_json(file)
    if metrics is not None and not isinstance(metrics, dict):
        raise ArtifactError(f"{file}: expected a JSON object or null.")
    return None if metrics is None else EvalReport.from_dict(metrics, str(file))


def files(folder: str | Path) -> list[str]:
    """The names of the artifact files (:data:`FILES`) that ``folder`` holds."""
    return [name for name in FILES if (Path(folder) / name).is_file()]


def occupant(path: str | Path) -> str:
    """What a writer that replaces whole folders finds at ``path``: ``"nothing"`` (no such
    path, or an empty folder), ``"file"`` (a file, or a link to nothing), or ``"folder"``
    (a folder with files, which only its own kind of writer may replace)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return "nothing"
    if not path.is_dir():
        return "file"
    return "folder" if any(path.iterdir()) else "nothing"


def check_output_dir(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to write an artifact where it would replace something it should not.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) an
    existing artifact. Never replaced: a file, or a folder with files that is not an
    artifact (it may be anything of the user's).

    Raises:
        ArtifactError: The message says why and what to change.
    """
    path, found = Path(path), occupant(path)
    if found == "file":
        raise ArtifactError(f"output_dir {path} is a file, not an artifact folder; lastlayer "
                            "never replaces it. Choose another output_dir.")
    if found == "folder" and is_artifact(path):
        if not overwrite:
            raise ArtifactError(f"output_dir {path} already holds an artifact; set "
                                "overwrite=true to replace it, or choose another output_dir.")
    elif found == "folder":
        raise ArtifactError(f"output_dir {path} is a folder with files but not a lastlayer "
                            f"artifact (no {METADATA}); lastlayer never replaces it, even with "
                            "overwrite=true. Choose another output_dir.")


def write_atomically(
    out_dir: str | Path, write: Callable[[Path], None], overwrite: bool = False,
    check: Callable[[Path, bool], None] = check_output_dir,
) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder, then move it to ``out_dir``.

    ``out_dir`` is checked by ``check(out_dir, overwrite)`` (default
    :func:`check_output_dir`, for artifacts) before anything is written and again just
    before the swap (:func:`lastlayer.artifact.atomic.replace_folder`).

    Raises:
        ArtifactError: ``out_dir`` may not be replaced.
    """
    return replace_folder(out_dir, write, lambda path: check(path, overwrite))


def side_files(
    meta: ArtifactMeta, metrics: EvalReport | dict[str, Any] | None, recipe_yaml: str,
    history: list[dict[str, float]], card: str,
) -> dict[str, str]:
    """The text files saved next to the PEFT files of a new artifact, by name.

    Args:
        meta: ``lastlayer.json``.
        metrics: ``eval.json`` (None: nothing measured; the file holds ``null``).
        recipe_yaml: The resolved recipe.
        history: The loss curve (``train_log.json``).
        card: The model card (:func:`lastlayer.hub.model_card` of the above).
    """
    report = as_report(metrics)
    return {
        METADATA: meta.to_json(),
        RECIPE: recipe_yaml,
        EVAL: json.dumps(None if report is None else report.to_dict(), indent=2) + "\n",
        CARD: card,
        TRAIN_LOG: json.dumps(history) + "\n",
    }


def write(path: str | Path, meta: ArtifactMeta, card: str) -> None:
    """Rewrite the ``lastlayer.json`` and model card of an existing artifact folder.

    The card and the metadata are each replaced atomically. PEFT files, recipe and logs are
    left as they are.
    """
    folder = Path(path)
    if not is_artifact(folder):
        raise ArtifactError(f"{folder} is not a lastlayer artifact (no {METADATA}).")
    for name, text in {METADATA: meta.to_json(), CARD: card}.items():
        write_text(folder / name, text)


def upgrade(path: str | Path,
            render_card: Callable[[ArtifactMeta, EvalReport | None], str]) -> bool:
    """Rewrite an artifact of an older schema in the current one; return whether it changed.

    Facts the old schema did not hold (e.g. the version of a packaged base) stay unknown.
    ``render_card`` (:func:`lastlayer.hub.model_card`) writes its card anew: the card's
    prose belongs to the Hub package, above this one.
    """
    meta = read(path)
    stored = read_json(Path(path) / METADATA).get("schema_version", 1)
    if stored == SCHEMA_VERSION:
        return False
    write(path, meta, render_card(meta, read_metrics(path)))
    return True
