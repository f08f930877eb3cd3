"""Corpus formats: which one a path is, and its records one by one, with the file's problems.

:func:`format_of` tells the format from the suffix (or the folder's ``save_to_disk``
files, or a ``hf://`` id); :func:`iter_records` yields ``(location, record)`` for any format,
each record holding the fields asked for, and turns what is wrong with a file (not UTF-8,
a broken gzip or CSV file, invalid JSON, a missing field) into a :class:`DataError` that
names the file, the line or row, and the recipe key to set. Parquet files, ``save_to_disk``
folders and Hub data sets are read in batches of columns (pyarrow / ``datasets``, extra
``datasets``, imported only then).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lastlayer.corpus.errors import DataError
from lastlayer.corpus.hub_data import (
    HubDataset,
    is_hub_dataset,
    load_hub_dataset,
    parse_hub_dataset,
)
from lastlayer.extras import require

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


Source = Path | HubDataset  # a local file or folder, or a Hub data set


def source_of(path: str | Path | HubDataset) -> Source:
    """A local path as a ``Path``, a ``hf://`` id parsed (:func:`parse_hub_dataset`)."""
    if isinstance(path, HubDataset):
        return path
    return parse_hub_dataset(str(path)) if is_hub_dataset(path) else Path(path)


def check_exists(path: Source) -> None:
    """A local ``path`` exists (a Hub data set is looked up when it is read)."""
    if isinstance(path, HubDataset):
        return  # resolved (cache or Hub) when read
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder. Check the path (relative paths are "
            f"resolved from {Path.cwd()})."
        )


def format_of(path: Source) -> str:
    """``txt``, ``jsonl``, ``csv``, ``parquet``, ``arrow`` (``save_to_disk``) or ``hub``."""
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


def open_text(path: Path) -> io.TextIOBase:
    """A (possibly gzipped) UTF-8 text file, for reading."""
    # utf-8-sig: a byte-order mark (Excel CSV exports) would otherwise end up in the first
    # header name and make the field "missing".
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8-sig", newline="")


_KEYS = ("data.text_field", "eval.label_field")  # the settings naming fields[0], fields[1:]


def iter_records(
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
            yield from jsonl_records(path, fields, keys)
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
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            yield f"line {lineno}", line


def jsonl_records(
    path: Path, fields: list[str], keys: tuple[str, str] = _KEYS
) -> Iterator[tuple[str, dict]]:
    """``(line N, object)`` per non-blank line, each object holding ``fields``."""
    with open_text(path) as f:
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
    with open_text(path) as f:
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
