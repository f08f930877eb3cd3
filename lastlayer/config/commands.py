"""The options of every ``lastlayer`` command, as typed dataclasses: one default, one menu each.

Each command's options are one dataclass below (``EvalOptions`` for ``lastlayer eval``, ...);
``lastlayer.cli`` generates its flags from them, so a default, a menu (``Literal``) or a help
text is written here once and nowhere else. A field's metadata (set with :func:`option`)
holds what argparse needs beyond the type and the default: the help text, the flag names
when they are not ``--field-name``, a metavar, ``positional`` for an argument without a
flag, ``nargs`` for a positional list, and ``group`` for flags that exclude each other.
The generator reads them as follows:

- ``bool`` -> a ``--flag`` that sets True (the field's default is False);
- ``Literal[...]`` (also inside ``| None``) -> ``choices``;
- ``int`` / ``float`` -> ``type``; ``list[str]`` -> a repeatable flag (``append``);
- a field without a default -> a required flag (or a positional argument).

The menus shared with recipes (dtype, quantization, kNN metric) come from
:mod:`lastlayer.config`; the fallbacks of the evaluation protocol are the recipe's own
(:class:`~lastlayer.config.EvalConfig` and :class:`~lastlayer.config.Recipe`), so a base
model is measured the way an adapter trained with a default recipe was.

Why not ``transformers.HfArgumentParser``: importing it imports ``transformers`` (about
0.6 s here), which ``lastlayer --help``, ``validate`` and ``ls`` must not pay, and it
renders booleans as ``--flag [FLAG]`` and adds ``(default: ...)`` to every line, changing
the help users have. ``tyro`` / ``simple-parsing`` would be a new dependency with a help
layout of their own. The generator (``lastlayer.cli.flags``) is a few dozen lines over
``dataclasses.fields`` and keeps argparse's output byte for byte.

:class:`ServeSettings` (the server's limits) lives here too, torch- and FastAPI-free, so
``lastlayer serve``'s defaults are the server's own.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lastlayer.config import (
    ConfigError,
    DType,
    EvalConfig,
    KnnMetric,
    Quantization,
    Quantize,
    Recipe,
)

ExportFormat = Literal["sentence-transformers"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
"""The shape of a Hub repo id (``huggingface_hub``'s own check imports too much for here)."""

DTYPE_HELP = ("compute dtype (default auto: bfloat16 where the CPU or GPU multiplies it "
              "natively, else float32; docs/precision.md)")
EVAL_DTYPE_HELP = ("compute dtype (default: the adapter's own, so eval.json is reproduced; "
                   "auto: bfloat16 where the CPU or GPU multiplies it natively)")
QUANTIZE_HELP = ("int8: the shared trunk in dynamic int8 linear layers (CPU only; adapters' "
                 "heads keep the dtype; costs some quality: docs/precision.md)")
ADAPTER_TARGET = ("adapter folder or Hub id (ORG/NAME[@REVISION]), base model Hub id, or "
                  "local model folder")


def option(default: Any = dataclasses.MISSING, *, help: str | None = None,
           flags: tuple[str, ...] | None = None, metavar: str | None = None,
           positional: bool = False, nargs: str | None = None, group: str | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that also describes its command-line argument.

    Args:
        default: The default (none: the argument is required).
        help: The help text ``--help`` prints.
        flags: Flag names when not ``--field-name`` (the value still lands in the field).
        metavar: The value's name in the help (argparse's default: the field in capitals).
        positional: An argument without a flag.
        nargs: ``"*"`` or ``"+"`` for a positional list.
        group: Flags with the same group name exclude each other.
        default_factory: A factory for a mutable default (``list``).
    """
    meta = {"help": help, "flags": flags, "metavar": metavar, "positional": positional,
            "nargs": nargs, "group": group}
    meta = {key: value for key, value in meta.items() if value not in (None, False)}
    return field(default=default, default_factory=default_factory, metadata=meta)


def at_least(options: Any, minimum: int | float, *names: str) -> None:
    """Refuse any of the fields ``names`` of ``options`` below ``minimum`` (None: not given).

    Raises:
        ConfigError: Naming the flag, its value and the range (exit status 2, no traceback).
    """
    for name in names:
        value = getattr(options, name)
        if value is not None and value < minimum:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be >= {minimum}, got {value}; pass {flag} "
                              f"{minimum} or more (or leave it out for the default).")


def _recipe_argument() -> Any:
    return option(positional=True, help="recipe YAML file")


def _overrides_argument() -> Any:
    return option(positional=True, nargs="*", default_factory=list,
                  help="dotted.key=value overrides")


def _json_flag(help: str) -> Any:
    return option(False, help=help)


# The evaluation protocol: ``eval`` and ``probe`` fill what the command line leaves unset
# from the adapter's recipe the same way (lastlayer.cli.protocol).


def _protocol_option(key: str, what: str | None = None) -> Any:
    """An ``eval`` / ``probe`` flag that defaults to the adapter's ``eval.<key>``."""
    fallback = f"the adapter's eval.{key}, or {getattr(EvalConfig, key)}"
    return option(None, help=f"{what} (default: {fallback})" if what else f"default: {fallback}")


@dataclass(kw_only=True)
class TrainOptions:
    """``lastlayer train``: a recipe and its overrides."""

    recipe: str = _recipe_argument()
    overrides: list[str] = _overrides_argument()


@dataclass(kw_only=True)
class ValidateOptions:
    """``lastlayer validate``: recipes, and overrides applied to each."""

    recipes: list[str] = option(positional=True, nargs="+", help="recipe YAML files")
    overrides: list[str] = option(flags=("--set",), metavar="KEY=VALUE", default_factory=list,
                                  help="override applied to every recipe")


@dataclass(kw_only=True)
class LsOptions:
    """``lastlayer ls``: where the project is."""

    root: str = option(".", help="project folder holding recipes/ and adapters/")


@dataclass(kw_only=True)
class EnvOptions:
    """``lastlayer env`` takes no options."""


@dataclass(kw_only=True)
class ChooseKOptions:
    """``lastlayer choose-k``: a recipe and its overrides, printed as text or JSON."""

    recipe: str = _recipe_argument()
    overrides: list[str] = _overrides_argument()
    json: bool = _json_flag("print the choice as JSON")


@dataclass(kw_only=True)
class EvalOptions:
    """``lastlayer eval``: what to embed, the protocol, and how to print the results."""

    target: str = option(positional=True, help=ADAPTER_TARGET)
    data: list[str] = option(help="labelled .jsonl(.gz)/.csv/.parquet/save_to_disk folder, a "
                             "Hub data set hf://ORG/NAME[?split=test], or a BEIR folder; "
                             "repeat for several")
    json: bool = _json_flag("print one JSON object instead")
    k: int | None = _protocol_option("k", "kNN neighbours")
    metric: KnnMetric | None = _protocol_option("metric", "kNN distance")
    max_docs: int | None = option(None, help="seeded sample of a labelled file's documents "
                                  "(default: the adapter's eval.max_docs, or all); for a BEIR "
                                  "folder, a corpus sample (only when given)")
    seed: int | None = option(None, help="seed of the sample, the 90/10 split and k-means "
                              f"(default: the adapter's recipe seed, or {Recipe.seed})")
    max_length: int | None = option(None, help="tokens per text (default: the adapter's, or "
                                    "128 for a base model)")
    batch_size: int = option(EvalConfig.batch_size)
    dtype: DType | None = option(None, help=EVAL_DTYPE_HELP)
    quantize: Quantize | None = option(None, help=QUANTIZE_HELP)
    no_clustering: bool = option(False, help="skip k-means")
    text_field: str | None = _protocol_option("text_field")
    label_field: str | None = _protocol_option("label_field")

    def __post_init__(self) -> None:
        at_least(self, 1, "k", "max_docs", "max_length", "batch_size")


@dataclass(kw_only=True)
class ProbeOptions:
    """``lastlayer probe``: what to probe, the protocol (as ``eval``'s), where to write."""

    target: str = option(positional=True, help=ADAPTER_TARGET)
    data: str | None = option(None, help="labelled corpus, a path or hf://ORG/NAME[?split=..] "
                              "(default for an adapter: its eval.data)")
    max_docs: int | None = option(None, help="seeded sample size (default: the adapter's "
                                  f"eval.max_docs, or {EvalConfig.max_docs})")
    seed: int | None = option(None, help="sampling seed (default: the adapter's recipe seed, "
                              f"or {Recipe.seed})")
    k: int | None = _protocol_option("k", "kNN neighbours")
    metric: KnnMetric | None = _protocol_option("metric", "kNN distance")
    text_field: str | None = _protocol_option("text_field")
    label_field: str | None = _protocol_option("label_field")
    out: str | None = option(None, help="output folder (default: the adapter folder, or "
                             "runs/probe)")

    def __post_init__(self) -> None:
        at_least(self, 1, "k", "max_docs")


@dataclass(kw_only=True)
class EmbedOptions:
    """``lastlayer embed``: the model and adapters, the corpus, the output, how to run."""

    model: str = option(help="base model: Hub id or local folder")
    adapter: list[str] = option(metavar="NAME=PATH", default_factory=list,
                                help="an adapter to load under NAME: artifact folder or Hub "
                                "id ORG/NAME[@REVISION]; repeat for several")
    adapter_for_all: str | None = option(None, metavar="NAME", group="use",
                                         help="encode every text with adapter NAME (default: "
                                         "the base model)")
    route: bool = option(False, group="use", help="route each text to the adapter that suits "
                         "it (or the base); the adapter column records which")
    input: str = option(help="corpus: .txt/.jsonl/.csv(.gz), .parquet, a save_to_disk folder "
                        "or a Hub data set hf://ORG/NAME[?split=..]")
    output: str = option(help="output file: .npy (vectors only, input order), .parquet or "
                         ".jsonl (id, adapter, vector)")
    text_field: str = option("text", help="field holding the text (default: text)")
    id_field: str | None = option(None, help="field holding each record's id (default: id when "
                                  "the records have it, else the 0-based row number)")
    batch_size: int = option(32)
    shard_size: int = option(1024, help="texts per shard, the unit of resuming and of each "
                             "process' share (default 1024)")
    dtype: DType | None = option(None, help=DTYPE_HELP)
    quantize: Quantize | None = option(None, help=QUANTIZE_HELP)
    quantization: Quantization | None = option(None, help="bitsandbytes-quantized base (extra "
                                               "quant)")
    cpu: bool = option(False, help="run on CPU even where there is a GPU")
    overwrite: bool = option(False, help="replace an existing output, and discard another "
                             "job's parts")
    no_progress: bool = option(False, help="no progress bar")

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "shard_size")


@dataclass(kw_only=True)
class ExportOptions:
    """``lastlayer export``: the adapter, where to write it, and how."""

    adapter: str = option(positional=True, help="adapter (artifact) folder, or Hub id "
                          "ORG/NAME[@REVISION]")
    out: str = option(positional=True, help="output folder (must not exist, or be empty)")
    format: ExportFormat = option("sentence-transformers", help="what to write (default: "
                                  "sentence-transformers)")
    overwrite: bool = option(False, help="replace an earlier export at OUT (never any other "
                             "folder)")
    base: str | None = option(None, help="load the base from this local folder instead of what "
                              "the adapter names (same weights)")
    no_verify: bool = option(False, help="skip loading the export with sentence-transformers "
                             "to compare its vectors with lastlayer's")


CPU_ENCODE_BATCH = 16
"""Texts per forward pass of a server batch on the CPU (``encode_batch_size=None``)."""
GPU_ENCODE_BATCH = 64
"""The same on a GPU (not measured there: the earlier default for every device)."""


@dataclass
class ServeSettings:
    """Limits and switches of the server (``lastlayer serve`` flags of the same names).

    Attributes:
        batch_window_ms: How long the first request of a batch waits for others to join.
        max_batch: Most texts gathered into one batch (a larger request runs alone).
        max_queue: Most texts waiting; beyond it requests get 429 with ``Retry-After``.
        max_inputs: Most texts in one request (413 beyond).
        max_body_bytes: Largest request body (413 beyond).
        encode_batch_size: Texts per forward pass inside a batch: what one batch holds in
            memory at once. None: :data:`CPU_ENCODE_BATCH` (16) on the CPU, where it is as
            fast as 64 at a quarter of the working memory, :data:`GPU_ENCODE_BATCH` (64)
            on a GPU (docs/serve.md, Batching).
        workers: Batches run at once, each in its own thread; on CPU each gets an equal
            share of torch's threads (2 on 2 cores: 1.07-1.19x the texts/s of one batch
            on both; docs/serve.md), or all of them when it runs alone at low load.
        api_key: When set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <key>``
            (401 otherwise); ``/health`` stays open but names no model.
        allow_adapter_updates: Enable ``POST /v1/adapters`` and ``DELETE /v1/adapters/x``.
        adapters_dir: The only folder runtime-added adapters may come from.
        model_id: The base's id in ``/v1/models`` (default: the id artifacts record).
        hub_allowlist: ``fnmatch`` patterns of Hub ids (``ORG/*``) a request may name as
            ``model``: such an adapter is fetched through the Hugging Face cache on its
            first request; none by default (nothing comes from the Hub).
    """

    batch_window_ms: float = 5.0
    max_batch: int = 256
    max_queue: int = 4096
    max_inputs: int = 2048
    max_body_bytes: int = 8 * 1024 * 1024
    encode_batch_size: int | None = None
    workers: int = 2
    api_key: str | None = field(default=None, repr=False)
    allow_adapter_updates: bool = False
    adapters_dir: Path | None = None
    model_id: str | None = None
    hub_allowlist: tuple[str, ...] = ()  # --hub-adapters

    def __post_init__(self) -> None:
        self.hub_allowlist = hub_patterns(self.hub_allowlist)
        for name in ("max_batch", "max_queue", "max_inputs", "max_body_bytes",
                     "encode_batch_size", "workers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}.")
        if self.max_inputs > self.max_queue:
            raise ValueError(f"max_inputs ({self.max_inputs}) cannot exceed max_queue "
                             f"({self.max_queue}): such a request could never be queued.")


def hub_patterns(given) -> tuple[str, ...]:
    """``--hub-adapters`` values (repeatable, each comma-separated) as one tuple of patterns.

    Raises:
        ValueError: A pattern that names no organisation (``ORG/...``): a bare ``*`` would
            let any request pull any repo from the Hub.
    """
    patterns = tuple(p.strip() for value in given for p in str(value).split(",") if p.strip())
    for pattern in patterns:
        org, sep, rest = pattern.partition("/")
        if not sep or not org or not rest or any(c in org for c in "*?["):
            raise ValueError(f"--hub-adapters {pattern!r}: write ORG/NAME or ORG/* (an "
                             "organisation, then a pattern of repo names), e.g. acme/*.")
    return patterns


@dataclass(kw_only=True)
class ServeOptions:
    """``lastlayer serve``: the base and adapters, the address, and the server's limits
    (their defaults are :class:`ServeSettings`')."""

    model: str = option(help="the base: Hub id or local folder")
    adapters: str | None = option(None, metavar="DIR", help="load every artifact folder under "
                                  "DIR (by its artifact name); runtime additions must come "
                                  "from here")
    adapter: list[str] = option(metavar="NAME=PATH", default_factory=list,
                                help="load one artifact under NAME: folder or Hub id "
                                "ORG/NAME[@REVISION] (repeatable)")
    host: str = option("127.0.0.1", help="address to bind (default 127.0.0.1: this machine "
                       "only)")
    port: int = option(8000)
    api_key_env: str | None = option(None, metavar="VAR", help="require 'Authorization: Bearer "
                                     "KEY' on /v1/* and /metrics, KEY read from environment "
                                     "variable VAR")
    allow_adapter_updates: bool = option(ServeSettings.allow_adapter_updates,
                                         help="enable POST /v1/adapters and DELETE "
                                         "/v1/adapters/NAME (paths under --adapters only)")
    batch_window_ms: float = option(ServeSettings.batch_window_ms, help="how long a batch "
                                    "waits for more requests (default "
                                    f"{ServeSettings.batch_window_ms:g})")
    max_batch: int = option(ServeSettings.max_batch, help="most texts per batch")
    encode_batch_size: int | None = option(ServeSettings.encode_batch_size,
                                           help="texts per forward pass inside a batch: "
                                           "what one batch holds in memory at once "
                                           f"(default {CPU_ENCODE_BATCH} on the CPU, "
                                           f"{GPU_ENCODE_BATCH} on a GPU)")
    workers: int = option(ServeSettings.workers, help="batches run at once, each on an "
                          "equal share of the CPU threads (default "
                          f"{ServeSettings.workers})")
    max_queue: int = option(ServeSettings.max_queue, help="most texts waiting; beyond it: 429 "
                            "with Retry-After")
    max_inputs: int = option(ServeSettings.max_inputs, help="most texts per request (413 "
                             "beyond)")
    max_body_bytes: int = option(ServeSettings.max_body_bytes, help="largest request body (413 "
                                 f"beyond; default {ServeSettings.max_body_bytes // 2**20} MiB)")
    max_length: int | None = option(None, help="token limit of the base (default 128); "
                                    "adapters use their own")
    device: str | None = option(None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    dtype: DType | None = option(None, help=DTYPE_HELP)
    quantize: Quantize | None = option(None, help=QUANTIZE_HELP)
    model_id: str | None = option(ServeSettings.model_id, help="the base's id in requests and "
                                  "/v1/models (default: the id adapters record)")
    adapter_memory: str | None = option(None, metavar="SIZE", help="memory the adapters' heads "
                                        "may use, e.g. 2GB, 512MB, 1.5GiB: adapters are "
                                        "registered at start and loaded on first use, least "
                                        "recently used dropped (default: all loaded at start)")
    hub_adapters: list[str] = option(metavar="PATTERN", default_factory=list,
                                     help="Hub ids a request may name as model, loaded on "
                                     "first use, e.g. 'acme/*' (repeatable or comma-separated;"
                                     " default: none from the Hub)")
    log_level: LogLevel = option("info")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}; pass a free port "
                              "such as 8000 (0: any free port).")
        at_least(self, 1, "max_batch", "max_queue", "max_inputs", "max_body_bytes",
                 "max_length", "workers", "encode_batch_size")
        at_least(self, 0, "batch_window_ms")
        try:
            hub_patterns(self.hub_adapters)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if self.max_inputs > self.max_queue:
            raise ConfigError(f"--max-inputs ({self.max_inputs}) cannot exceed --max-queue "
                              f"({self.max_queue}): such a request could never be queued; "
                              "raise --max-queue or lower --max-inputs.")


@dataclass(kw_only=True)
class PushOptions:
    """``lastlayer push``: the artifact, the Hub repo, and how to commit."""

    adapter: str = option(positional=True, help="adapter (artifact) folder")
    repo_id: str = option(positional=True, metavar="ORG/NAME", help="the Hub repo (created if "
                          "missing)")
    private: bool = option(False, help="create the repo private (an existing repo keeps its "
                           "visibility)")
    revision: str | None = option(None, metavar="BRANCH", help="commit to this branch (created "
                                  "from main if missing)")
    create_pr: bool = option(False, help="open a pull request against the default branch "
                             "instead of committing")
    commit_message: str | None = option(None, help="default: one line naming the adapter")

    def __post_init__(self) -> None:
        if not _REPO_ID.fullmatch(self.repo_id) or ".." in self.repo_id or "--" in self.repo_id:
            raise ConfigError(f"{self.repo_id!r} is not a Hub repo id: write ORG/NAME (letters, "
                              "digits, '-', '_', '.'; at most 96 characters), e.g. "
                              "acme/minilm-medical.")
