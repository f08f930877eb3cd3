"""Older ``lastlayer.json`` schemas, moved forward in memory to the one this lastlayer reads.

Schema 1 is the untyped dict of lastlayer 0.1.0 (no ``schema_version`` key): a flat dict
whose ``base_source`` held a path of the machine it was trained on. Schema 2 did not
record the training precision (schema 3's ``training.mixed_precision``: unknown, None).
:data:`MIGRATIONS` maps a version to the function that turns it into the next one;
reading applies them in turn, and :func:`lastlayer.artifact.upgrade` writes the result back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from lastlayer.artifact.layout import ArtifactError

_V1_PACKAGED = re.compile(r"packaged copy from PyPI package (?P<dist>\S+) \((?P<path>.*)\)")
_V1_GGUF = re.compile(r"GGUF file (?P<file>.+), dequantized")


def from_v1(old: dict[str, Any], where: str) -> dict[str, Any]:
    """Schema 1 -> 2. The old ``base_source`` is reduced to portable facts; the package
    version was not recorded then and stays unknown (None).

    Raises:
        ArtifactError: A key is missing or malformed.
    """
    try:
        return {
            "schema_version": 2,
            "name": old["name"], "lastlayer_version": old["lastlayer_version"],
            "created": old["created"], "base": _v1_base(old, where),
            "embedding": {k: old[k] for k in ("pooling", "normalize", "max_length")},
            "adapter": old["adapter"], "objective": old["objective"], "layers": old["layers"],
            "training": {"data": old["train_data"], "steps": old["train_steps"],
                         "final_loss": old.get("final_loss"),
                         "view_stats": old.get("view_stats") or {}},
        }
    except KeyError as err:
        raise ArtifactError(f"{where}: missing key {err.args[0]} (schema 1).") from None
    except (AttributeError, TypeError) as err:
        raise ArtifactError(f"{where}: malformed schema-1 metadata ({err}).") from None


def _v1_base(old: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``base`` section from schema 1's ``base_*`` keys."""
    source, _, weights = old["base_source"].partition("; weights:")
    gguf = _V1_GGUF.search(weights or old.get("base_weights") or "")
    base: dict[str, Any] = {
        "model": old["base_model"], "fingerprint": old["base_fingerprint"],
        "revision": old.get("base_revision"), "dequantized_gguf": gguf is not None,
        "file": gguf["file"] if gguf else None,
        "dtype": old.get("dtype", "float32"), "quantization": old.get("quantization"),
    }
    if packaged := _V1_PACKAGED.fullmatch(source):
        dist = packaged["dist"]
        parts = PurePosixPath(packaged["path"].replace("\\", "/")).parts
        module = dist.replace("-", "_")
        inner = parts[parts.index(module) + 1:] if module in parts else ()
        file = "/".join([*inner, *([base["file"]] if base["file"] else [])]) or None
        base.update(origin="package", package=dist, file=file)
    elif source.startswith("local path"):
        base.update(origin="local")
    elif source.startswith("Hugging Face Hub"):
        base.update(origin="hub")
    else:
        raise ArtifactError(f"{where}: unrecognised base_source {source!r}.")
    return base


def from_v2(old: dict[str, Any], where: str) -> dict[str, Any]:
    """Schema 2 -> 3: the same keys; the training precision, not recorded then, stays
    unknown (``training.mixed_precision`` left to its default, None)."""
    return {**old, "schema_version": 3}


MIGRATIONS: dict[int, Callable[[dict[str, Any], str], dict[str, Any]]] = {1: from_v1,
                                                                          2: from_v2}
"""Schema version -> the function that turns such a dict into the next version's."""
