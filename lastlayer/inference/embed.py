"""Embed a corpus file into ``.npy``, ``.parquet`` or ``.jsonl``: resumable, on many processes.

Why one module of ~600 lines: planning, the parts folder, resuming and the output writers
all read and write one on-disk format (``OUTPUT.parts/``: ``job.json`` and the shards),
which stays consistent most easily in one place; the shard store (``_prepare_parts`` …
``_write_atomic``) is the seam to split along.

``lastlayer embed`` is built from two steps, so that every mistake a user can make is found
before a model is loaded:

1. :func:`plan_embedding` reads the corpus (ids and texts, with the readers of
   :mod:`lastlayer.corpus`) and checks the output (suffix, existing file, extras).
2. :func:`run_embedding` encodes the texts in shards of ``shard_size`` consecutive
   records, each saved to ``OUTPUT.parts/`` as soon as it is done, then assembles the
   output atomically and removes the parts.

Interrupted runs resume: a rerun keeps every shard that loads and holds the right number of
vectors, and encodes only the others. ``OUTPUT.parts/job.json`` records what the shards
were made from (the corpus' digest, the shard size, the model settings); parts of another
job are refused rather than mixed in.

Under ``torchrun`` or ``accelerate launch`` every process takes every ``num_processes``-th
shard and the main process assembles the output (the parts folder must be on a file system
all processes see). A shard is always encoded in one call, whichever process runs it, so
its batches, and hence its vectors, do not depend on the number of processes.

The encoder is anything with ``encode(texts, adapter=..., batch_size=..., progress=...)``
returning vectors and (with ``adapter="auto"``) the routed names, as
:class:`lastlayer.inference.Embedder` has.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lastlayer.artifact import atomic_path
from lastlayer.config import ConfigError
from lastlayer.config.commands import EmbedOptions
from lastlayer.core.progress import progress as progress_bar
from lastlayer.corpus import read_with_ids
from lastlayer.extras import require

log = logging.getLogger(__name__)

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
BARRIER_TIMEOUT = timedelta(days=7)
"""How long a process that has finished its shards waits for the others."""
PARTS_SUFFIX = ".parts"
JOB_FILE = "job.json"
ROUTE = "auto"
"""The adapter that routes each text (``lastlayer.core.engine.AUTO``; this module loads no
torch, so it names it rather than importing the engine)."""
_JOB_VERSION = 1


class EmbedError(ConfigError):
    """An embedding job cannot run as asked (output, options); the message says what to do."""


class TextEncoder(Protocol):
    """What :func:`run_embedding` needs from an encoder (``lastlayer.inference.Embedder``)."""

    def encode(self, texts: list[str], adapter: Any = None, batch_size: int = 32,
               progress: bool | None = None) -> Any:
        """``texts`` embedded (``lastlayer.core.engine.Embeddings``): ``.vectors`` (N, d)
        float32 in order and, with ``adapter="auto"`` (each text routed to the adapter that
        suits it, from one pass), ``.routed``: per text, the adapter name (None: the base).
        ``adapter``: None, a name, ``"auto"``, or one name (or None) per text."""
        ...


class ProcessState(Protocol):
    """The part of ``accelerate.PartialState`` that splitting the work needs."""

    process_index: int
    num_processes: int
    is_main_process: bool

    def wait_for_everyone(self) -> None: ...


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


# ---------------------------------------------------------------------------------------
# Step 1: read and check everything that can be wrong before a model is loaded.


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


# ---------------------------------------------------------------------------------------
# Step 2: encode the shards (resuming), then assemble the output.


class _OneProcess:
    """The process state of a plain, single-process run (no process group to set up)."""

    process_index = 0
    num_processes = 1
    is_main_process = True
    device = None

    def wait_for_everyone(self) -> None:
        pass


def process_state(cpu: bool = False) -> ProcessState:
    """This process' place in a ``torchrun`` / ``accelerate launch`` run, or a lone process.

    A launched run gets ``accelerate.PartialState`` (gloo on CPU: ``cpu`` or no GPU, one GPU
    per process otherwise; its ``device`` is this process' device). A plain run sets up
    nothing.

    The processes meet only before and after the whole encoding; the process group's
    default 30-minute timeout would end a long run whose processes finish further apart
    than that, so its timeout is :data:`BARRIER_TIMEOUT`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _OneProcess()
    import torch
    from accelerate import PartialState

    use_cpu = cpu or not torch.cuda.is_available() or (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    return PartialState(cpu=use_cpu, timeout=BARRIER_TIMEOUT)


def run_embedding(job: EmbedJob, encoder: TextEncoder, state: ProcessState | None = None,
                  progress: bool = True) -> Path:
    """Encode the job's shards that are not done yet, then write the output atomically.

    Args:
        job: From :func:`plan_embedding`.
        encoder: See :class:`TextEncoder`.
        state: This process' share (default: :func:`process_state`).
        progress: Show a progress bar (main process only), in texts left to embed.

    Returns:
        The output file (complete on return, in every process).

    Raises:
        EmbedError: The parts folder holds another job's shards (and not ``overwrite``).
    """
    state = state or process_state()
    _prepare_parts(job, state)
    mine = range(state.process_index, job.num_shards, state.num_processes)
    total = sum(len(job.rows(i)) for i in mine)
    desc = "embed" if state.num_processes == 1 else (
        f"embed (process 0 of {state.num_processes})")
    done = 0
    with progress_bar(total=total, desc=desc, unit="text",
                      enabled=bool(progress and state.is_main_process)) as bar:
        for shard in mine:
            rows = job.rows(shard)
            if _read_shard(job.shard_path(shard), len(rows)) is not None:
                done += 1
                bar.total -= len(rows)  # the bar counts the work left: an honest rate and ETA
                bar.refresh()
                continue
            vectors, names = _encode(job, encoder, [job.texts[i] for i in rows])
            _write_shard(job.shard_path(shard), vectors, names)
            bar.update(len(rows))
    if done:
        log.info("Resumed: %d of this process' %d shard(s) were already done.", done, len(mine))
    state.wait_for_everyone()
    if state.is_main_process:
        _assemble(job)
    state.wait_for_everyone()
    return job.output


def _prepare_parts(job: EmbedJob, state: ProcessState) -> None:
    """Create the parts folder, or check that its shards are this job's (then they resume)."""
    saved = _saved_identity(job.parts)
    if saved is not None and saved != job.identity and not job.overwrite:
        changed = sorted(k for k in {*saved, *job.identity} if saved.get(k) != job.identity.get(k))
        raise EmbedError(
            f"{job.parts} holds the shards of another embedding job (it differs in: "
            f"{', '.join(changed) or 'the job file'}). Rerun with the same corpus and settings "
            "to resume it, pass --overwrite to discard it and start over, or delete it."
        )
    state.wait_for_everyone()  # everyone has looked before the main process changes anything
    if state.is_main_process:
        if saved != job.identity and job.parts.exists():
            _discard(job.parts)
        job.parts.mkdir(parents=True, exist_ok=True)
        if saved != job.identity:
            _write_atomic(job.parts / JOB_FILE,
                          lambda f: f.write(json.dumps(job.identity, indent=2).encode()))
    state.wait_for_everyone()


def _saved_identity(parts: Path) -> dict | None:
    """The job file of an existing parts folder; None when there is no folder or no
    readable job file (shards of an unknown job: they are discarded).

    Raises:
        EmbedError: The folder exists but is not a parts folder of ``lastlayer embed``.
    """
    if not parts.exists():
        return None
    if not parts.is_dir() or any(not _is_ours(p.name) for p in parts.iterdir()):
        raise EmbedError(f"{parts} exists and is not a work folder of lastlayer embed; move it "
                         "away, or choose another output name.")
    try:
        saved = json.loads((parts / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # interrupted before the job file was written: start over
        return None
    return saved if isinstance(saved, dict) else None


def _is_ours(name: str) -> bool:
    return name.startswith(("shard-", JOB_FILE, "assembling"))


def _discard(parts: Path) -> None:
    log.warning("Discarding %s (the parts of another job, or incomplete).", parts)
    shutil.rmtree(parts)


def _encode(job: EmbedJob, encoder: TextEncoder,
            texts: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """One shard's vectors (one encode call: routing and embedding share the bottom pass)
    and the adapter of each row."""
    result = encoder.encode(texts, adapter=ROUTE if job.route else job.adapter,
                            batch_size=job.batch_size, progress=False)
    if job.route:
        names = list(result.routed)
        if len(names) != len(texts):
            raise RuntimeError(f"routing returned {len(names)} names for {len(texts)} texts")
    else:
        names = [job.adapter] * len(texts)
    vectors = np.asarray(result.vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise RuntimeError(f"encode returned shape {vectors.shape} for {len(texts)} texts")
    return vectors, names


def _write_shard(path: Path, vectors: np.ndarray, names: list[str | None]) -> None:
    adapters = np.array(["" if n is None else n for n in names], dtype=str)
    with _kept_on_failure(path, path.parent):
        _write_atomic(path, lambda f: np.savez(f, vectors=vectors, adapters=adapters))


@contextlib.contextmanager
def _kept_on_failure(path: Path, parts: Path) -> Iterator[None]:
    """A failing write (a full disk, a quota) is an :class:`EmbedError` that says the
    finished shards are kept: nothing half-written is left under ``path``'s name."""
    try:
        yield
    except OSError as err:
        raise EmbedError(
            f"could not write {path}: {err.strerror or err}; the finished shards are kept in "
            f"{parts}: free space (or fix the folder) and run the same command again to "
            "resume.") from err


def _read_shard(path: Path, rows: int) -> tuple[np.ndarray, list[str | None]] | None:
    """A finished shard's vectors and adapter names, or None when it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            vectors, adapters = data["vectors"], data["adapters"]
    except Exception as err:  # a truncated or garbled file fails in many ways: redo it
        log.warning("%s is damaged (%s); embedding it again.", path.name, err)
        return None
    if (vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != rows
            or adapters.shape != (rows,)):
        log.warning("%s holds %s vectors, expected %d; embedding it again.", path.name,
                    vectors.shape, rows)
        return None
    return vectors, [name or None for name in adapters.tolist()]


def _shards(job: EmbedJob) -> Iterator[tuple[range, np.ndarray, list[str | None]]]:
    """Every shard in order, checked: all processes must have finished theirs."""
    dim = None
    for shard in range(job.num_shards):
        rows = job.rows(shard)
        found = _read_shard(job.shard_path(shard), len(rows))
        if found is None:
            raise RuntimeError(f"{job.shard_path(shard)} is missing or damaged after every "
                               "process finished; run the same command again to redo it.")
        vectors, names = found
        if dim is not None and vectors.shape[1] != dim:
            raise RuntimeError(f"{job.shard_path(shard)} holds {vectors.shape[1]}-d vectors, "
                               f"the others {dim}-d; delete {job.parts} and start over.")
        dim = vectors.shape[1]
        yield rows, vectors, names


def _assemble(job: EmbedJob) -> None:
    """Write the output from the shards into the parts folder, move it in place, clean up."""
    suffix = output_format(job.output)
    writers: dict[str, Callable[[EmbedJob, Path], None]] = {
        ".npy": _write_npy, ".parquet": _write_parquet, ".jsonl": _write_jsonl}
    with _kept_on_failure(job.output, job.parts), \
            atomic_path(job.output, tmp=job.parts / f"assembling{suffix}") as tmp:
        writers[suffix](job, tmp)
    shutil.rmtree(job.parts)
    log.info("Wrote %d vectors to %s", len(job.texts), job.output)


def _write_npy(job: EmbedJob, path: Path) -> None:
    """(N, d) float32, filled shard by shard (never the whole corpus in memory)."""
    out = None
    for rows, vectors, _ in _shards(job):
        if out is None:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                            shape=(len(job.texts), vectors.shape[1]))
        out[rows.start:rows.stop] = vectors
    assert out is not None  # a job has at least one text
    out.flush()
    del out


def _write_jsonl(job: EmbedJob, path: Path) -> None:
    """One ``{"id", "adapter", "vector"}`` object per line; floats round-trip to float32."""
    with open(path, "w", encoding="utf-8") as f:
        for rows, vectors, names in _shards(job):
            for row, vector, name in zip(rows, vectors, names, strict=True):
                f.write(json.dumps({"id": job.ids[row], "adapter": name,
                                    "vector": vector.tolist()}) + "\n")


def _write_parquet(job: EmbedJob, path: Path) -> None:
    """Columns ``id`` (int64 or string), ``adapter`` (string, null: the base) and ``vector``
    (fixed-size list of float32); one row group per shard."""
    pa = require("pyarrow", "datasets", f"Writing {job.output} (parquet)")
    pq = require("pyarrow.parquet", "datasets", f"Writing {job.output} (parquet)")
    id_type = pa.int64() if job.ids and isinstance(job.ids[0], int) else pa.string()
    writer = None
    try:
        for rows, vectors, names in _shards(job):
            dim = vectors.shape[1]
            if writer is None:
                schema = pa.schema([("id", id_type), ("adapter", pa.string()),
                                    ("vector", pa.list_(pa.float32(), dim))])
                writer = pq.ParquetWriter(path, schema)
            table = pa.table({
                "id": pa.array(job.ids[rows.start:rows.stop], type=id_type),
                "adapter": pa.array(names, type=pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32()), dim),
            }, schema=writer.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """Write a file under a temporary name, then rename it: readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


# ---------------------------------------------------------------------------------------
# Both steps, as ``lastlayer embed`` runs them.


def embed_file(
    input: str | Path, output: str | Path, load: Callable[[Any], TextEncoder], *,
    adapters: Mapping[str, str] | None = None, adapter: str | None = None,
    route: bool = False, text_field: str = TEXT_FIELD, id_field: str | None = None,
    shard_size: int = SHARD_SIZE, batch_size: int = BATCH_SIZE, overwrite: bool = False,
    cpu: bool = False, settings: Mapping[str, Any] | None = None, progress: bool = True,
    field_keys: tuple[str, str] = ("--text-field", "--id-field"),
) -> EmbedJob:
    """Check and read everything, load the encoder, embed (resuming), write the output.

    Args:
        input, output: As :func:`plan_embedding`.
        load: ``load(device)`` -> the encoder with ``adapters`` loaded under their names;
            ``device`` is this process' device in a launched run, else None (the
            encoder's choice).
        adapters: ``{name: path}`` that ``load`` loads, recorded with the shards.
        adapter, route, text_field, id_field, shard_size, batch_size, overwrite, settings,
        field_keys: As :func:`plan_embedding`.
        cpu: Use CPU processes (gloo) in a launched run even where there are GPUs.
        progress: Show a progress bar.

    Returns:
        The job that was run (ids, texts, output).
    """
    adapters = dict(adapters or {})
    job = plan_embedding(
        input, output, text_field=text_field, id_field=id_field, adapter=adapter,
        route=route, adapter_names=list(adapters), shard_size=shard_size,
        batch_size=batch_size, overwrite=overwrite,
        settings={**(settings or {}), "adapters": adapters}, field_keys=field_keys,
    )
    state = process_state(cpu)
    device = getattr(state, "device", None) if state.num_processes > 1 else None
    if cpu and device is None:
        device = "cpu"
    encoder = load(device)
    if route:
        check_routable(encoder)
    run_embedding(job, encoder, state, progress=progress)
    return job


def check_routable(encoder: Any) -> None:
    """Routing can pick the loaded adapters: they hold routing signatures.

    Looks at ``encoder.adapters`` (``{name: info}`` whose ``routable`` says so, as
    :attr:`lastlayer.inference.Embedder.adapters`); an encoder without it is not checked.

    Raises:
        EmbedError: No adapter has a signature (a warning names those without one).
    """
    infos = getattr(encoder, "adapters", None)
    if not isinstance(infos, Mapping):
        return
    unroutable = [name for name, info in infos.items() if not getattr(info, "routable", True)]
    if infos and len(unroutable) == len(infos):
        raise EmbedError(f"--route: none of the adapters ({', '.join(unroutable)}) holds a "
                         "routing signature (artifacts trained with an older lastlayer have "
                         "none). Choose one with --adapter-for-all NAME instead.")
    if unroutable:
        log.warning("--route never picks %s: no routing signature in the artifact.",
                    ", ".join(unroutable))
