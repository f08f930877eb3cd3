"""Corpus readers: one document per record, from the file formats people actually have.

Why one module of ~600 lines: every format goes through the same record checks (the
fields asked for, empty texts skipped and counted, ids, one error message style naming
the file and the line or row), so the per-format readers are short functions over one
shared core; splitting them would spread that core. The Hub data-set references
(``hf://``, :class:`HubDataset`) are the seam to split along if they grow.

Supported inputs (chosen by suffix):

- ``.txt`` / ``.txt.gz``: one document per non-empty line (no fields, no labels).
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line; field names are configurable.
- ``.csv`` / ``.csv.gz``: a header row, then one record per row (stdlib :mod:`csv`).
- ``.parquet``: read column-wise with ``pyarrow`` (extra ``datasets``).
- a folder written by ``datasets.Dataset.save_to_disk``.
- a data set on the Hugging Face Hub, ``hf://ORG/NAME`` (see :func:`parse_hub_dataset`),
  read through ``datasets`` (extra ``datasets``) and its local cache, offline too.

Retrieval sets (BEIR) and a file's own train/test split are read by
``lastlayer.evaluation.datasets``.

Texts are stripped; records whose text is empty are skipped and counted (logged as a
warning). Every problem raises :class:`DataError` with a message that names the file and
says how to fix it. Neither ``torch`` nor ``datasets`` is imported at module level: the
heavy imports happen only for parquet files, ``save_to_disk`` folders and Hub data sets.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lastlayer.extras import require
from lastlayer.offline import hub_available

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = (
    ".txt",
    ".txt.gz",
    ".jsonl",
    ".jsonl.gz",
    ".csv",
    ".csv.gz",
    ".parquet",
    "a folder saved by datasets.Dataset.save_to_disk",
    "a Hub data set hf://ORG/NAME",
)

_BATCH_ROWS = 1024  # rows per batch when streaming parquet / arrow


class DataError(ValueError):
    """A corpus file cannot be read as asked; the message says how to fix it."""


# ------------------------------------------------------------------ Hub data sets by id

HUB_PREFIX = "hf://"
HUB_SYNTAX = "hf://ORG/NAME[@REVISION][?split=SPLIT][&config=CONFIG]"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_REVISION = re.compile(r"[\w./-]+")
_CONFIG = re.compile(r"[^\s&=?]+")
_SPLIT_PART = r"[\w.-]+(\[[\w%:-]*\])?"  # a split name, optionally sliced: train[:10%]
_SPLIT = re.compile(rf"{_SPLIT_PART}(\+{_SPLIT_PART})*")


@dataclass(frozen=True)
class HubDataset:
    """A data set on the Hugging Face Hub, as named by ``hf://ORG/NAME[@REV][?split=..]``.

    Attributes:
        repo_id: ``ORG/NAME`` (or a bare ``NAME`` for the few un-namespaced data sets).
        revision: A branch, tag or commit; None: the default branch.
        split: What ``datasets.load_dataset`` reads, e.g. ``train``, ``test``,
            ``train+validation`` or ``train[:50%]`` (default ``train``).
        config: The data set's configuration (subset); None: its default one.
    """

    repo_id: str
    revision: str | None = None
    split: str = "train"
    config: str | None = None

    def __str__(self) -> str:
        text = HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")
        query = [f"split={self.split}"] * (self.split != "train") + \
            [f"config={self.config}"] * bool(self.config)
        return text + ("?" + "&".join(query) if query else "")


def is_hub_dataset(source: str | Path | HubDataset) -> bool:
    """Whether ``source`` names a Hub data set (``hf://...``) rather than a local path."""
    return isinstance(source, HubDataset) or str(source).startswith(HUB_PREFIX)


def parse_hub_dataset(text: str) -> HubDataset:
    """Read ``hf://ORG/NAME[@REVISION][?split=SPLIT][&config=CONFIG]``.

    The query keys are ``split`` (default ``train``; ``datasets`` split syntax such as
    ``train+validation`` or ``train[:50%]``, written as is, no URL escaping) and
    ``config`` (the data set's subset; default: its default one).

    Raises:
        DataError: ``text`` is not of that form; the message shows the form.
    """
    if not text.startswith(HUB_PREFIX):
        raise DataError(f"{text!r} is not a Hub data set id; expected {HUB_SYNTAX}.")
    body, _, query = text[len(HUB_PREFIX):].partition("?")
    repo_id, at, revision = body.partition("@")
    repo_id = repo_id.rstrip("/")
    if repo_id.startswith("datasets/") and repo_id.count("/") == 2:  # huggingface_hub's form
        repo_id = repo_id[len("datasets/"):]
    if not _REPO_ID.fullmatch(repo_id) or (at and not _REVISION.fullmatch(revision)):
        raise DataError(f"{text!r}: not a Hub data set id; expected {HUB_SYNTAX}, e.g. "
                        "hf://cornell-movie-review-data/rotten_tomatoes?split=test.")
    settings: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if key not in ("split", "config") or not eq or not value or key in settings:
            raise DataError(f"{text!r}: {item!r} is not split=SPLIT or config=CONFIG (each at "
                            f"most once); expected {HUB_SYNTAX}.")
        settings[key] = value
    if "split" in settings and not _SPLIT.fullmatch(settings["split"]):
        raise DataError(f"{text!r}: split {settings['split']!r} is not a split name (train, "
                        "test, train+validation, train[:50%], ...).")
    if "config" in settings and not _CONFIG.fullmatch(settings["config"]):
        raise DataError(f"{text!r}: config {settings['config']!r} is not a configuration name.")
    return HubDataset(repo_id, revision or None, settings.get("split", "train"),
                      settings.get("config"))


@functools.lru_cache(maxsize=8)
def load_hub_dataset(ref: HubDataset) -> Any:
    """The ``datasets.Dataset`` that ``ref`` names, from the local cache or the Hub.

    Goes through ``datasets.load_dataset`` and its cache (``HF_DATASETS_CACHE``): what was
    read once online is read again offline. ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
    are honoured; an unreachable Hub is found out in seconds
    (:func:`lastlayer.offline.hub_available`) and the cache used. No remote code runs
    (``datasets`` no longer runs loading scripts).

    Raises:
        DataError: Not cached while offline, no such data set, split or config; one line.
    """
    datasets = require("datasets", "datasets", f"Reading {ref} (a Hub data set)")
    online = hub_available(datasets=True)
    quiet = logging.getLogger("datasets")  # its "using the cached version" notices, twice
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        ds = datasets.load_dataset(ref.repo_id, ref.config, split=ref.split,
                                   revision=ref.revision)
    except (ConnectionError, OSError, ValueError) as err:
        raise DataError(_hub_error(ref, err, online)) from err
    finally:
        quiet.setLevel(level)
    if not isinstance(ds, datasets.Dataset):  # pragma: no cover - split is always given
        raise DataError(f"{ref}: expected one split, got {type(ds).__name__}.")
    logger.info("%s: %d records (%s)", ref, len(ds),
                "from the Hub or its cache" if online else "offline, from the local cache")
    return ds


def _hub_error(ref: HubDataset, err: Exception, online: bool) -> str:
    """One line saying why ``ref`` could not be read, and what to do."""
    detail = " ".join(str(err).split())  # datasets' messages span lines
    if not online and isinstance(err, ConnectionError):
        import datasets

        return (f"{ref}: not in the local datasets cache ({datasets.config.HF_DATASETS_CACHE}) "
                "and the Hub is offline or unreachable. Run once with network access to cache "
                "it (then it works offline), or point the recipe at a local file.")
    if "split" in detail.lower():
        return f"{ref}: no such split ({detail}). Set split= in the id, e.g. ?split=test."
    if "config" in detail.lower():
        return f"{ref}: no such configuration ({detail}). Set config= in the id."
    return f"{ref}: cannot load this Hub data set ({type(err).__name__}: {detail})."


def read_texts(
    path: str | Path, text_field: str = "text", max_docs: int | None = None
) -> list[str]:
    """Read the documents of a corpus file.

    Args:
        path: Corpus file, ``save_to_disk`` folder or ``hf://`` Hub data set (see the module
            docstring for formats).
        text_field: Field holding the text (ignored for ``.txt``). Recipe key
            ``data.text_field``.
        max_docs: Keep only the first ``max_docs`` non-empty documents (``None``: all).

    Returns:
        The stripped, non-empty texts in file order.

    Raises:
        DataError: Missing file, unknown format, missing field, invalid JSON, a text that
            is not a string, or no documents at all.
    """
    texts, _ = _read(path, text_field, None, max_docs)
    return texts


Source = Path | HubDataset  # a local file or folder, or a Hub data set


def source_of(path: str | Path | HubDataset) -> Source:
    """A local path as a ``Path``, a ``hf://`` id parsed (:func:`parse_hub_dataset`)."""
    if isinstance(path, HubDataset):
        return path
    return parse_hub_dataset(str(path)) if is_hub_dataset(path) else Path(path)


def read_labelled(
    path: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    max_docs: int | None = None,
) -> tuple[list[str], list[str]]:
    """Read documents and their labels (for kNN evaluation).

    Args:
        path: Corpus file, ``save_to_disk`` folder or ``hf://`` id; ``.txt`` has no labels.
        text_field: Field holding the text. Recipe key ``data.text_field``.
        label_field: Field holding the label. Recipe key ``eval.label_field``.
        max_docs: Keep only the first ``max_docs`` non-empty documents (``None``: all).

    Returns:
        ``(texts, labels)`` of equal length; labels are converted to ``str`` so that
        ``3`` and ``"3"`` are the same class whatever the file format.

    Raises:
        DataError: As :func:`read_texts`, plus a ``.txt`` input or a missing (null) label.
    """
    texts, labels = _read(path, text_field, label_field, max_docs)
    assert labels is not None
    return texts, labels


def read_with_ids(
    path: str | Path, text_field: str = "text", id_field: str = "id",
    id_required: bool = False, keys: tuple[str, str] = ("text_field", "id_field"),
) -> tuple[list[int | str], list[str]]:
    """Read the documents of a corpus file with an id each (for embedding a corpus).

    The id is the record's ``id_field`` when the file has that field, else the record's
    row number: its 0-based position among the file's records, counting the skipped ones
    (for ``.txt``, the 0-based line number), so that ids always point back at the input.

    Args:
        path: Corpus file or ``save_to_disk`` folder (formats as :func:`read_texts`).
        text_field: Field holding the text (ignored for ``.txt``).
        id_field: Field holding the id, used when the file has it.
        id_required: The file must have ``id_field`` (it was asked for by name).
        keys: The names of the settings that choose the two fields, for the messages.

    Returns:
        ``(ids, texts)`` in file order, records with empty text skipped (and counted in a
        warning). Ids are ints when every id is an int, else strings.

    Raises:
        DataError: As :func:`read_texts`, plus an id field that some records have and
            others lack (or that is empty), and a required id field that is missing.
    """
    path = source_of(path)
    _check_exists(path)
    fmt = _format_of(path)
    if fmt == "txt" and id_required:
        raise DataError(f"{path}: a .txt file has no fields, so no '{id_field}' field: its "
                        f"ids are line numbers. Leave {keys[1]} unset, or use a .jsonl, .csv "
                        "or .parquet file.")
    ids: list[Any] = []
    texts: list[str] = []
    has_ids: bool | None = None
    skipped = 0
    records = _records(path, fmt, [text_field], [id_field], keys=(keys[0], keys[1]))
    for row, (where, record) in enumerate(records):
        found = fmt != "txt" and record.get(id_field) not in (None, "")
        if has_ids is None:
            has_ids = found
            if id_required and not found:
                present = ", ".join(map(str, record)) if fmt != "txt" else "none"
                raise DataError(f"{path} {where}: no field '{id_field}' (or an empty one; "
                                f"fields present: {present}). Set {keys[1]} to the field "
                                "that holds the ids, or leave it unset to number the rows.")
        elif found != has_ids:
            raise DataError(
                f"{path} {where}: " + (f"field '{id_field}' is missing or empty, but earlier "
                "records have it" if has_ids else f"has a '{id_field}' field, but the first "
                "record has none") + ". Give every record an id, or none (then ids are row "
                "numbers)."
            )
        text = _text_of(path, where, record if fmt == "txt" else record[text_field],
                        text_field, keys[0])
        if not text:
            skipped += 1
            continue
        ids.append(record[id_field] if has_ids else row)
        texts.append(text)
    if skipped:
        logger.warning("%s: skipped %d record(s) with empty text", path, skipped)
    if not texts:
        raise DataError(f"{path}: no documents found. Check the file, or set {keys[0]} to the "
                        "field that holds the text.")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        ids = [str(i) for i in ids]
    return ids, texts


# --------------------------------------------------------------------------- internals


def _read(
    path: str | Path | HubDataset, text_field: str, label_field: str | None,
    max_docs: int | None,
) -> tuple[list[str], list[str] | None]:
    path = source_of(path)
    if max_docs is not None and (
        isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1
    ):
        raise DataError(f"{path}: max_docs must be a positive integer or None, got {max_docs!r}")
    _check_exists(path)
    fmt = _format_of(path)
    if fmt == "txt" and label_field is not None:
        raise DataError(
            f"{path}: a .txt file holds one document per line and has no labels. "
            f"Use a .jsonl, .csv or .parquet file with a '{label_field}' field."
        )

    # text first: _missing_field_for tells the two apart by position.
    wanted = [text_field] if label_field is None else list(dict.fromkeys([text_field, label_field]))

    texts: list[str] = []
    labels: list[str] = []
    skipped = 0
    for where, record in _records(path, fmt, wanted):
        text = _text_of(path, where, record if fmt == "txt" else record[text_field], text_field)
        if not text:
            skipped += 1
            continue
        if label_field is not None:
            label = record[label_field]
            if label is None or (isinstance(label, str) and not label.strip()):
                raise DataError(
                    f"{path} {where}: field '{label_field}' is empty. Every "
                    f"document needs a label for evaluation; drop unlabelled rows "
                    f"or set eval.label_field to another field."
                )
            labels.append(str(label).strip())
        texts.append(text)
        if max_docs is not None and len(texts) >= max_docs:
            break

    if skipped:
        logger.warning("%s: skipped %d record(s) with empty text", path, skipped)
    if not texts:
        hint = f" ({skipped} record(s) had an empty '{text_field}')" if skipped else ""
        raise DataError(
            f"{path}: no documents found{hint}. Check the file, or set "
            f"data.text_field to the field that holds the text."
        )
    return texts, (labels if label_field is not None else None)


def _check_exists(path: Source) -> None:
    if isinstance(path, HubDataset):
        return  # resolved (cache or Hub) when read
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder. Check the path (relative paths are "
            f"resolved from {Path.cwd()})."
        )


def _text_of(path: Source, where: str, text: Any, text_field: str,
             key: str = "data.text_field") -> str:
    """A record's text, stripped ("" for a missing one); a non-string is an error."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(
            f"{path} {where}: field '{text_field}' holds a {type(text).__name__}, not a "
            f"string. Set {key} to the field that holds the document text."
        )
    if "\x00" in text:
        raise DataError(f"{path} {where}: holds NUL bytes, so this is a binary file, not "
                        "text. Point the recipe at the text corpus (UTF-8).")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\ud800": no tokenizer takes it
        raise DataError(f"{path} {where}: field '{text_field}' holds {text[e.start]!r}, half "
                        "of a UTF-16 surrogate pair, which is not text. Fix or drop that "
                        "record.") from None
    return text.strip()


def _format_of(path: Source) -> str:
    if isinstance(path, HubDataset):
        return "hub"
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise DataError(
                f"{path}: this folder holds a DatasetDict with splits "
                f"{splits}. Point the path at one split, e.g. {path / splits[0]}"
                if splits
                else f"{path}: this folder holds an empty DatasetDict."
            )
        if (path / "state.json").exists() or (path / "dataset_info.json").exists():
            return "arrow"
        raise DataError(
            f"{path}: this folder was not written by datasets.Dataset.save_to_disk "
            f"(no state.json). Supported inputs: {', '.join(SUPPORTED_FORMATS)}."
        )
    name = path.name.lower()
    for suffix, fmt in (
        (".jsonl.gz", "jsonl"),
        (".jsonl", "jsonl"),
        (".txt.gz", "txt"),
        (".txt", "txt"),
        (".csv.gz", "csv"),
        (".csv", "csv"),
        (".parquet", "parquet"),
    ):
        if name.endswith(suffix):
            return fmt
    raise DataError(
        f"{path}: unknown file type '{''.join(path.suffixes) or path.name}'. "
        f"Supported inputs: {', '.join(SUPPORTED_FORMATS)}."
    )


def _open_text(path: Path) -> io.TextIOBase:
    # utf-8-sig: a byte-order mark (Excel CSV exports) would otherwise end up in the first
    # header name and make the field "missing".
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")


_KEYS = ("data.text_field", "eval.label_field")  # the settings naming fields[0], fields[1:]


def _records(
    path: Source, fmt: str, fields: list[str], optional: list[str] | None = None,
    keys: tuple[str, str] = _KEYS,
) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)``; records are dicts (a plain string for ``.txt``).

    Every record has the ``fields``; it has an ``optional`` field when the file does (jsonl
    and csv records hold all their fields anyway). ``keys`` name the settings that choose
    the first field and the others, for the messages.
    """
    try:
        if fmt == "txt":
            yield from _txt_records(path)
        elif fmt == "jsonl":
            yield from _jsonl_records(path, fields, keys)
        elif fmt == "csv":
            yield from _csv_records(path, fields, keys)
        else:
            yield from _arrow_records(path, fmt, fields, optional or [], keys)
    except UnicodeDecodeError as e:
        raise DataError(_not_utf8(path, e)) from e
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: not a valid gzip file ({e}). Re-compress it or drop the .gz suffix."
        ) from e
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e}). Check its quoting, or save it "
                        "as .jsonl.") from e


def _not_utf8(path: Path, err: UnicodeDecodeError) -> str:
    """Why a file is not UTF-8 text, naming the UTF-16 case (a byte-order mark) outright."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            head = f.read(2)
    except (OSError, EOFError, zlib.error):
        head = b""
    if head in (b"\xff\xfe", b"\xfe\xff"):
        return (f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8. "
                f"Re-save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8 {path} > new-file.")
    return (f"{path}: not valid UTF-8 text ({err}): a binary file, or text in another "
            "encoding (latin-1, cp1252). Re-save it as UTF-8.")


def _txt_records(path: Path) -> Iterator[tuple[str, str]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            yield f"line {lineno}", line


def _jsonl_records(
    path: Path, fields: list[str], keys: tuple[str, str] = _KEYS
) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue  # blank lines (often a trailing newline) are not records
            where = f"line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path} {where}: invalid JSON ({e.msg} at column {e.colno}). "
                    f"Each line must hold one JSON object."
                ) from e
            except (ValueError, RecursionError) as e:  # a 5000-digit number, deep nesting
                raise DataError(f"{path} {where}: JSON this reader refuses ({e}). Each line "
                                "must hold one JSON object of plain fields.") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path} {where}: expected a JSON object, got "
                    f"{type(record).__name__}. Each line must hold one JSON object."
                )
            for field in fields:
                if field not in record:
                    raise _missing_field_for(path, where, field, fields, list(record), keys)
            yield where, record


def _csv_records(
    path: Path, fields: list[str], keys: tuple[str, str] = _KEYS
) -> Iterator[tuple[str, dict]]:
    # Documents are long: lift the stdlib's 128 KiB per-field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise DataError(
                f"{path}: empty CSV file. The first row must be a header naming "
                f"the fields (e.g. text,label)."
            )
        for field in fields:
            if field not in header:
                raise _missing_field_for(path, "header", field, fields, list(header), keys)
        for record in reader:
            # reader.line_num is the physical line where this record ended (quoted newlines).
            yield f"line {reader.line_num}", record


def _arrow_records(
    path: Source, fmt: str, fields: list[str], optional: list[str], keys: tuple[str, str] = _KEYS
) -> Iterator[tuple[str, dict]]:
    if fmt == "parquet":
        pq = require("pyarrow.parquet", "datasets", f"Reading {path} (parquet)")
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid and friends
            raise DataError(f"{path}: not a readable parquet file ({e}).") from e
        present = pf.schema_arrow.names
        _check_fields(path, fields, present, keys)
        columns = fields + [f for f in optional if f in present and f not in fields]
        batches = (b.to_pydict() for b in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns))
    else:
        ds = load_hub_dataset(path) if isinstance(path, HubDataset) else _load_from_disk(path)
        present = list(ds.column_names)
        _check_fields(path, fields, present, keys)
        columns = fields + [f for f in optional if f in present and f not in fields]
        batches = ds.select_columns(columns).iter(batch_size=_BATCH_ROWS)

    row = 0
    for batch in batches:
        n = len(batch[columns[0]])
        for i in range(n):
            row += 1
            yield f"row {row}", {field: batch[field][i] for field in columns}


def _load_from_disk(path: Path) -> Any:
    """The ``datasets.Dataset`` of a ``save_to_disk`` folder."""
    datasets = require("datasets", "datasets", f"Reading {path} (a save_to_disk folder)")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: datasets.load_from_disk failed ({e}).") from e
    if not isinstance(ds, datasets.Dataset):
        raise DataError(
            f"{path}: expected a Dataset, found {type(ds).__name__}. "
            f"Point the path at one split."
        )
    return ds


def _check_fields(
    path: Source, fields: list[str], present: list[str], keys: tuple[str, str] = _KEYS
) -> None:
    for field in fields:
        if field not in present:
            raise _missing_field_for(path, "columns", field, fields, present, keys)


def _missing_field_for(
    path: Source, where: str, field: str, fields: list[str], present: list[str],
    keys: tuple[str, str] = _KEYS,
) -> DataError:
    # fields is [text_field] or [text_field, label_field]: the position says which recipe
    # key sets it, whatever the field is called.
    key = keys[0] if field == fields[0] else keys[1]
    return DataError(
        f"{path} {where}: no field '{field}' (fields present: "
        f"{', '.join(map(str, present)) or 'none'}). Set {key} to one of them."
    )

