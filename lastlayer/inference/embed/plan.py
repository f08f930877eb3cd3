"""An embedding job, and step 1: check everything that can be wrong before a model loads.

:func:`plan_embedding` checks the output (suffix, an existing file, the parquet extra), the
sizes and the adapter choice, reads the corpus (ids and texts, :func:`read_with_ids`),
refuses repeated ids, and returns the :class:`EmbedJob` that step 2
(:func:`lastlayer.inference.embed.run.run_embedding`) runs; its ``identity`` (the corpus'
digest, the shard size, the model settings) is what the shards are recorded as made from.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lastlayer.config import ConfigError
from lastlayer.config.commands import EmbedOptions
from lastlayer.corpus import read_with_ids
from lastlayer.extras import require

log = logging.getLogger(__package__)  # "lastlayer.inference.embed", for the whole job

FORMATS = (".npy", ".parquet", ".jsonl")
"""Output suffixes: vectors only (input order), or id / adapter / vector rows."""
_DEFAULTS = {f.name: f.default for f in fields(EmbedOptions)}
SHARD_SIZE: int = _DEFAULTS["shard_size"]
"""Texts per shard by default (``lastlayer embed --shard-size``'s): a few seconds of work to
lose on a GPU, few files on disk."""
BATCH_SIZE: int = _DEFAULTS["batch_size"]
"""Texts per forward pass by default (``--batch-size``'s)."""
TEXT_FIELD: str = _DEFAULTS["text_field"]
"""The field holding the text by default (``--text-field``'s)."""
PARTS_SUFFIX = ".parts"
_JOB_VERSION = 1


class EmbedError(ConfigError):
    """An embedding job cannot run as asked (output, options); the message says what to do."""


@dataclass
class EmbedJob:
    """One corpus to embed, checked and read (see :func:`plan_embedding`).

    Attributes:
        output: The file to write; its suffix (one of :data:`FORMATS`) chooses the format.
        ids: One id per text (ints, or strings), in input order.
        texts: The texts, in input order.
        adapter: The adapter name every text is encoded with (None: the base model).
        route: Route each text to an adapter instead (``adapter="auto"``).
        shard_size: Texts per shard.
        batch_size: Texts per forward pass (may change between a run and its resumption).
        overwrite: Replace an existing output, and discard the parts of another job.
        identity: What the shards depend on, saved as ``job.json``; a resumed run must match.
    """

    output: Path
    ids: list[int | str]
    texts: list[str]
    adapter: str | None = None
    route: bool = False
    shard_size: int = SHARD_SIZE
    batch_size: int = BATCH_SIZE
    overwrite: bool = False
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def parts(self) -> Path:
        """The work folder of the shards, next to the output."""
        return self.output.with_name(self.output.name + PARTS_SUFFIX)

    @property
    def num_shards(self) -> int:
        return -(-len(self.texts) // self.shard_size)

    def rows(self, shard: int) -> range:
        """The input rows of shard ``shard``."""
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, len(self.texts)))

    def shard_path(self, shard: int) -> Path:
        return self.parts / f"shard-{shard:06d}.npz"


def output_format(output: str | Path) -> str:
    """``.npy``, ``.parquet`` or ``.jsonl`` from the output's name.

    Raises:
        EmbedError: Another suffix.
    """
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise EmbedError(f"{output}: unknown output type '{suffix or Path(output).name}'. Name "
                         f"the output with one of {', '.join(FORMATS)}: .npy holds the vectors "
                         "only, in input order; .parquet and .jsonl hold id, adapter and vector "
                         "columns.")
    return suffix


def parse_adapters(specs: Sequence[str]) -> dict[str, str]:
    """``["NAME=PATH", ...]`` (``--adapter``) -> ``{name: path}``.

    Raises:
        EmbedError: A spec without ``=``, an empty name or path, or a name given twice.
    """
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise EmbedError(f"--adapter {spec!r}: expected NAME=PATH, e.g. "
                             "--adapter medical=adapters/medical/minilm-l6_lora-top2_crop.")
        if name in adapters:
            raise EmbedError(f"--adapter: the name {name!r} is given twice; give each adapter "
                             "its own name.")
        adapters[name] = path
    return adapters


def check_adapter_choice(names: Sequence[str], adapter: str | None, route: bool) -> None:
    """The adapter choice makes sense for the adapters that will be loaded.

    Raises:
        EmbedError: Both an adapter for all and routing; an unknown adapter name; routing
            without adapters; adapters that neither option would use.
    """
    if adapter is not None and route:
        raise EmbedError("choose one of --adapter-for-all NAME (every text) and --route (an "
                         "adapter per text), not both.")
    if adapter is not None and adapter not in names:
        known = ", ".join(names) or "none"
        raise EmbedError(f"--adapter-for-all {adapter!r}: no adapter of that name (loaded: "
                         f"{known}). Load it with --adapter {adapter}=PATH.")
    if route and not names:
        raise EmbedError("--route needs adapters to route to: add --adapter NAME=PATH, once "
                         "per domain.")
    if names and adapter is None and not route:
        raise EmbedError("adapters were given but neither --adapter-for-all NAME nor --route: "
                         "say how to use them (without either, the base model embeds "
                         "everything).")


def plan_embedding(
    input: str | Path, output: str | Path, *, text_field: str = TEXT_FIELD,
    id_field: str | None = None, adapter: str | None = None, route: bool = False,
    adapter_names: Sequence[str] | None = None, shard_size: int = SHARD_SIZE,
    batch_size: int = BATCH_SIZE, overwrite: bool = False,
    settings: Mapping[str, Any] | None = None,
    field_keys: tuple[str, str] = ("text_field", "id_field"),
) -> EmbedJob:
    """Read the corpus and check the output: everything that needs no model.

    Args:
        input: A corpus file or ``save_to_disk`` folder (as the training readers accept).
        output: The ``.npy`` / ``.parquet`` / ``.jsonl`` file to write.
        text_field: The field holding the text.
        id_field: The field holding each record's id; None: ``id`` when the records have
            it, else row numbers (see :func:`lastlayer.corpus.read_with_ids`).
        adapter: Encode every text with this adapter.
        route: Route each text to an adapter (the ``adapter`` column says which).
        adapter_names: The adapters that will be loaded, to check ``adapter`` and ``route``
            against (None: not checked).
        shard_size: Texts per shard (the unit of resuming and of work per process).
        batch_size: Texts per forward pass.
        overwrite: Replace an existing output (only once the new one is complete).
        settings: What else decides the vectors (model, adapters, dtype, ...), recorded with
            the shards so that parts of another job are never mixed in.
        field_keys: How messages name the settings of ``text_field`` and ``id_field``.

    Raises:
        EmbedError: A bad output name, an existing output without ``overwrite``, a bad
            adapter choice or size.
        DataError: The corpus cannot be read as asked.
        MissingExtraError: A parquet output without pyarrow.
    """
    output = Path(output)
    suffix = output_format(output)
    if suffix == ".parquet":
        require("pyarrow.parquet", "datasets", f"Writing {output} (parquet)")
    if output.is_dir():
        raise EmbedError(f"{output} is a folder; the output must be a file name ending in "
                         f"{', '.join(FORMATS)}.")
    if output.exists() and not overwrite:
        raise EmbedError(f"{output} exists; pass --overwrite to replace it (once the new "
                         "output is complete), or choose another output.")
    for name, value in (("shard size", shard_size), ("batch size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EmbedError(f"the {name} must be a positive integer, got {value!r}.")
    if adapter_names is not None:
        check_adapter_choice(adapter_names, adapter, route)
    elif adapter is not None and route:
        check_adapter_choice([adapter], adapter, route)
    if route and suffix == ".npy":
        log.warning("%s: a .npy file holds vectors only, not the adapter each text was routed "
                    "to; write .parquet or .jsonl to keep it.", output)
    ids, texts = read_with_ids(input, text_field, id_field or "id",
                               id_required=id_field is not None, keys=field_keys)
    check_unique_ids(input, ids, id_field or "id")
    identity = {
        "version": _JOB_VERSION, "records": len(texts), "corpus_sha256": _digest(ids, texts),
        "shard_size": shard_size, "adapter": adapter, "route": route,
        "settings": json.loads(json.dumps(dict(settings or {}), default=str)),
    }
    return EmbedJob(output=output, ids=ids, texts=texts, adapter=adapter, route=route,
                    shard_size=shard_size, batch_size=batch_size, overwrite=overwrite,
                    identity=identity)


def check_unique_ids(input: str | Path, ids: Sequence[int | str], field: str) -> None:
    """Refuse a corpus whose ids repeat: rows of the output could not be told apart.

    Raises:
        EmbedError: Naming the first repeated id and the records (0-based) that hold it.
    """
    seen: dict[int | str, int] = {}
    for row, id_ in enumerate(ids):
        if id_ in seen:
            raise EmbedError(
                f"{input}: the id {id_!r} (field '{field}') is used by records {seen[id_]} and "
                f"{row} (0-based, empty texts skipped); ids must be unique. Fix the ids, or "
                "set --id-field to a field whose values are."
            )
        seen[id_] = row


def _digest(ids: Sequence[int | str], texts: Sequence[str]) -> str:
    """sha256 of the ids and texts: a resumed run must embed exactly the same records."""
    digest = hashlib.sha256()
    for id_, text in zip(ids, texts, strict=True):
        digest.update(json.dumps([id_, text]).encode())
        digest.update(b"\n")
    return digest.hexdigest()
