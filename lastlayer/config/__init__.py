"""Recipes: typed dataclasses, airtight YAML loading and ``dotted.key=value`` overrides.

The dataclasses below are the single source of truth for every recipe key: a YAML key
that no field reads is an error, and so is a value of the wrong type or outside a closed
menu (``Literal``); :mod:`lastlayer.config.decode` holds those rules, shared with the
artifact's ``lastlayer.json``. The ``adapter`` and ``objective`` sections are also what an
artifact records of its recipe. This module imports no torch, so ``lastlayer validate`` is
instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lastlayer.config.decode import Source, decode
from lastlayer.corpus import DataError, is_hub_dataset, parse_hub_dataset


class ConfigError(ValueError):
    """A recipe or override is invalid; the message says which key and how to fix it."""


Pooling = Literal["mean", "cls", "last"]
Quantization = Literal["8bit", "4bit"]
Quantize = Literal["int8"]  # inference only: the shared trunk in dynamic int8 (CPU)
DType = Literal["auto", "float32", "bfloat16", "float16"]  # auto: bf16 where native
AdapterKind = Literal["lora", "full"]
ObjectiveKind = Literal["crop", "span", "dropout"]  # one object each: training.objectives
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]  # auto: bf16 where native
KnnMetric = Literal["euclidean", "cosine"]
CacheDType = Literal["float32", "bfloat16"]
TopKSignal = Literal["crops", "probe"]
AUTO = "auto"  # adapter.top_k: auto -- chosen before training (lastlayer.training.choose_k)


@dataclass
class ModelConfig:
    """Which encoder to load and how to turn its token states into one embedding."""

    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside a local folder (transformers dequantizes it)
    pooling: Pooling = "mean"
    normalize: bool = True
    max_length: int = 128
    # Compute dtype; auto: bf16 where the hardware multiplies it natively
    # (lastlayer.core.precision). Training keeps float32 weights: see train.mixed_precision.
    dtype: DType = "float32"
    quantization: Quantization | None = None
    # Run Python code shipped in the model's repo (models transformers lacks): only for
    # code you trust; an artifact never switches it on by itself.
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _positive("model.max_length", self.max_length)


@dataclass
class AdapterConfig:
    """Where the adapter goes (the top-k blocks) and what it is (LoRA or full unfreeze)."""

    kind: AdapterKind = "lora"
    top_k: int | Literal["auto"] = 2  # "auto": chosen from the base and the training docs
    top_k_signal: TopKSignal = "crops"  # what "auto" measures: crops (label-free) or probe
    top_k_docs: int = 256  # documents "auto" measures on
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # suffixes, e.g. [q_proj, v_proj]; null = all linear

    def __post_init__(self) -> None:
        if isinstance(self.top_k, str) or isinstance(self.top_k, bool):
            if self.top_k != AUTO:
                raise ConfigError(
                    f"adapter.top_k must be a number of layers (>= 1) or auto; got "
                    f"{self.top_k!r}.")
        elif not isinstance(self.top_k, int):
            raise ConfigError(f"adapter.top_k must be an int or auto, got {self.top_k!r}.")
        else:
            _positive("adapter.top_k", self.top_k)
        _positive("adapter.top_k_docs", self.top_k_docs)
        _positive("adapter.r", self.r)
        _positive("adapter.alpha", self.alpha)
        _fraction("adapter.dropout", self.dropout)
        if self.kind == "full" and self.target_modules:
            raise ConfigError(
                "adapter.target_modules only applies to adapter.kind=lora; the full kind "
                "trains whole top-k blocks. Remove it or set adapter.kind=lora."
            )


@dataclass
class ObjectiveConfig:
    """The self-supervised task: how two views of a document are made, and the loss."""

    kind: ObjectiveKind = "crop"
    sentences_per_crop: int = 2
    min_sentence_chars: int = 100
    max_sentence_chars: int = 250
    span_min_ratio: float = 0.1
    span_max_ratio: float = 0.5
    dropout: float = 0.1  # switched on where the model has none (dropout objective only)
    model_dropout: bool = True  # false: the model's own dropout off (crop and span only)
    temperature: float = 0.05
    symmetric: bool = False

    def __post_init__(self) -> None:
        _positive("objective.sentences_per_crop", self.sentences_per_crop)
        _positive("objective.min_sentence_chars", self.min_sentence_chars)
        if self.max_sentence_chars < self.min_sentence_chars:
            raise ConfigError(
                "objective.max_sentence_chars must be >= objective.min_sentence_chars "
                f"(got {self.max_sentence_chars} < {self.min_sentence_chars})."
            )
        _fraction("objective.span_min_ratio", self.span_min_ratio)
        _fraction("objective.span_max_ratio", self.span_max_ratio)
        if self.span_max_ratio < self.span_min_ratio:
            raise ConfigError("objective.span_max_ratio must be >= objective.span_min_ratio.")
        _fraction("objective.dropout", self.dropout)
        if self.kind == "dropout" and not self.model_dropout:
            raise ConfigError(
                "objective.model_dropout=false switches off the noise the dropout objective "
                "learns from; use it with kind crop or span."
            )
        if self.temperature <= 0:
            raise ConfigError(f"objective.temperature must be > 0, got {self.temperature}.")


@dataclass
class DataConfig:
    """The unlabelled in-domain corpus the adapter is trained on.

    ``train`` is a local file or folder, or a Hub data set
    ``hf://ORG/NAME[@REVISION][?split=SPLIT][&config=CONFIG]`` (split ``train`` by default).
    """

    train: str = ""
    text_field: str = "text"
    max_docs: int | None = None

    def __post_init__(self) -> None:
        _check_source("data.train", self.train)
        if self.max_docs is not None:
            _positive("data.max_docs", self.max_docs)


@dataclass
class TrainConfig:
    """The optimisation budget and schedule of the Accelerate loop."""

    max_steps: int = 100
    batch_size: int = 32  # per process; InfoNCE negatives = batch_size x processes
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: MixedPrecision = "auto"  # bf16 where the hardware has it natively, else no
    checkpoint_every: int = 0  # optimizer steps; 0 = no periodic checkpoints
    resume: bool = False  # continue from the newest checkpoint in <output_dir>.checkpoints
    cpu: bool = False  # force the CPU even when a GPU is present
    cached_pairs: int = 0  # >0: pre-sample this many pairs, cache bottom layers, run top-k only
    cache_dtype: CacheDType = "float32"
    cache_dir: str | None = None  # memory-map cached states to a file here instead of RAM
    group_by_length: bool = False  # cached pairs: batch views of similar length (less padding)
    routing_docs: int = 1000  # training documents sampled for the routing signature; 0 = none

    def __post_init__(self) -> None:
        _positive("train.max_steps", self.max_steps)
        _positive("train.grad_accum_steps", self.grad_accum_steps)
        if self.batch_size < 2:
            raise ConfigError(
                "train.batch_size must be >= 2: InfoNCE needs in-batch negatives "
                f"(got {self.batch_size})."
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}.")
        _fraction("train.warmup_ratio", self.warmup_ratio)
        if self.cached_pairs < 0:
            raise ConfigError("train.cached_pairs must be >= 0 (0 = fresh views every step).")
        if self.group_by_length and not self.cached_pairs:
            raise ConfigError("train.group_by_length needs train.cached_pairs > 0: only cached "
                              "views have known token lengths before batching.")
        if self.checkpoint_every < 0:
            raise ConfigError("train.checkpoint_every must be >= 0 (0 disables checkpoints).")
        if self.routing_docs < 0 or 0 < self.routing_docs < 4:
            raise ConfigError("train.routing_docs must be 0 (no routing signature) or >= 4 "
                              f"(got {self.routing_docs}).")


@dataclass
class EvalConfig:
    """Held-out kNN evaluation of the base and the adapted model (labels only used here)."""

    data: str | None = None  # labelled corpus (path or hf:// id); its documents are held out
    text_field: str = "text"
    label_field: str = "label"
    max_docs: int | None = 1000  # a seeded random sample of this many labelled documents
    k: int = 10
    metric: KnnMetric = "euclidean"
    batch_size: int = 32

    def __post_init__(self) -> None:
        _check_source("eval.data", self.data)
        _positive("eval.k", self.k)
        _positive("eval.batch_size", self.batch_size)
        if self.max_docs is not None and self.max_docs <= self.k:
            raise ConfigError(f"eval.max_docs must be > eval.k ({self.k}), got {self.max_docs}.")


@dataclass
class Recipe:
    """A whole training run: the object a recipe YAML file describes.

    ``output_dir`` is the artifact folder the run saves. ``overwrite: false`` (the default)
    stops ``lastlayer train`` at the start, before any model is loaded, when an artifact
    already exists there; ``overwrite: true`` replaces it (atomically, once the new one is
    complete). A file, or a folder with files that is not an artifact, is never replaced.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 42
    output_dir: str = ""
    overwrite: bool = False  # replace an existing artifact at output_dir

    def __post_init__(self) -> None:
        if not self.data.train:
            raise ConfigError("data.train is required: a .txt, .jsonl(.gz), .csv or .parquet file, "
                              "or a Hub data set hf://ORG/NAME.")
        if not self.output_dir:
            raise ConfigError("output_dir is required, e.g. output_dir=adapters/<domain>/<name>.")
        quantization = self.model.quantization
        if self.adapter.kind == "full" and quantization:
            # Caught here, not minutes into a run: the full kind trains whole copies of the
            # top-k blocks, and bitsandbytes' 8-/4-bit weights are integers (no gradient).
            raise ConfigError(
                f"adapter.kind=full cannot train on a {quantization} (bitsandbytes) base: it "
                f"trains whole copies of the top-k blocks, and {quantization} weights are "
                "integers that take no gradient. Use adapter.kind=lora (its low-rank weights "
                "train in full precision beside the quantized ones), or model.quantization=null."
            )

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (what is printed and saved as recipe.yaml)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_source(key: str, value: str | None) -> None:
    """A ``hf://`` data set id must be well formed (checked here, before any download)."""
    if value and is_hub_dataset(value):
        try:
            parse_hub_dataset(value)
        except DataError as err:
            raise ConfigError(f"{key}: {err}") from None


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}.")


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must be between 0 and 1, got {value}.")


# ---------------------------------------------------------------------------------------
# Building dataclasses from untyped data: the shared decoder (lastlayer.config.decode).

RECIPE = Source(ConfigError, root="the recipe")
"""How recipes and overrides are decoded: ``ConfigError``, YAML's words."""


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Args:
        cls: A dataclass type (``Recipe`` or one of its sections).
        data: The mapping read from YAML.
        prefix: Dotted path of ``data`` inside the recipe, for error messages.

    Raises:
        ConfigError: On an unknown key, a wrong type, or a failed cross-field check.
    """
    return decode(cls, data, RECIPE, prefix)


# ---------------------------------------------------------------------------------------
# Loading recipes and applying overrides.


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {text!r} must look like dotted.key=value, e.g. train.max_steps=50."
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err}).") from err
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``dotted.key=value`` into ``data`` (in place); keys are checked later."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section.")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a mapping, with clear errors for missing or broken files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist (try `lastlayer ls` to list recipes).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"recipe {path} is not UTF-8 text (byte {err.start}: "
                          f"{err.object[err.start:err.start + 1]!r}); save it as UTF-8.") from err
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping at the top level.")
    return data


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file (or start from defaults when ``path`` is None) and apply overrides.

    Args:
        path: A recipe YAML file, or None to build a recipe from overrides alone.
        overrides: ``dotted.key=value`` strings, applied after the file is read.

    Returns:
        The validated ``Recipe``.

    Raises:
        ConfigError: The file, a key, a value or a cross-field check is invalid.
    """
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    try:
        return from_dict(Recipe, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from err
