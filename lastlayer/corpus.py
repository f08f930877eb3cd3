"""Corpus readers: one document per record, from the file formats people actually have.

Supported inputs (chosen by suffix):

- ``.txt`` / ``.txt.gz``: one document per non-empty line (no fields, no labels).
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line; field names are configurable.
- ``.csv`` / ``.csv.gz``: a header row, then one record per row (stdlib :mod:`csv`).
- ``.parquet``: read column-wise with ``pyarrow`` (extra ``datasets``).
- a folder written by ``datasets.Dataset.save_to_disk``.

Retrieval sets (BEIR) and a file's own train/test split are read by
``lastlayer.evaluation.datasets``.

Texts are stripped; records whose text is empty are skipped and counted (logged as a
warning). Every problem raises :class:`DataError` with a message that names the file and
says how to fix it. Neither ``torch`` nor ``datasets`` is imported at module level: the
heavy imports happen only for parquet files and ``save_to_disk`` folders.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lastlayer.extras import require

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
)

_BATCH_ROWS = 1024  # rows per batch when streaming parquet / arrow


class DataError(ValueError):
    """A corpus file cannot be read as asked; the message says how to fix it."""


def read_texts(
    path: str | Path, text_field: str = "text", max_docs: int | None = None
) -> list[str]:
    """Read the documents of a corpus file.

    Args:
        path: Corpus file or ``save_to_disk`` folder (see the module docstring for formats).
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


def read_labelled(
    path: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    max_docs: int | None = None,
) -> tuple[list[str], list[str]]:
    """Read documents and their labels (for kNN evaluation).

    Args:
        path: Corpus file or ``save_to_disk`` folder; ``.txt`` has no labels.
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


# --------------------------------------------------------------------------- internals


def _read(
    path: str | Path, text_field: str, label_field: str | None, max_docs: int | None
) -> tuple[list[str], list[str] | None]:
    path = Path(path)
    if max_docs is not None and (
        isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1
    ):
        raise DataError(f"{path}: max_docs must be a positive integer or None, got {max_docs!r}")
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder. Check the path (relative paths are "
            f"resolved from {Path.cwd()})."
        )
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
        text = record[text_field] if fmt != "txt" else record
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise DataError(
                f"{path} {where}: field '{text_field}' holds a "
                f"{type(text).__name__}, not a string. Set data.text_field to the "
                f"field that holds the document text."
            )
        text = text.strip()
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


def _format_of(path: Path) -> str:
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


def _records(path: Path, fmt: str, fields: list[str]) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)``; records are dicts (a plain string for ``.txt``)."""
    try:
        if fmt == "txt":
            yield from _txt_records(path)
        elif fmt == "jsonl":
            yield from _jsonl_records(path, fields)
        elif fmt == "csv":
            yield from _csv_records(path, fields)
        else:
            yield from _arrow_records(path, fmt, fields)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e}). Re-save the file as UTF-8.") from e
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(
            f"{path}: not a valid gzip file ({e}). Re-compress it or drop the .gz suffix."
        ) from e


def _txt_records(path: Path) -> Iterator[tuple[str, str]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            yield f"line {lineno}", line


def _jsonl_records(path: Path, fields: list[str]) -> Iterator[tuple[str, dict]]:
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
            if not isinstance(record, dict):
                raise DataError(
                    f"{path} {where}: expected a JSON object, got "
                    f"{type(record).__name__}. Each line must hold one JSON object."
                )
            for field in fields:
                if field not in record:
                    raise _missing_field_for(path, where, field, fields, list(record))
            yield where, record


def _csv_records(path: Path, fields: list[str]) -> Iterator[tuple[str, dict]]:
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
                raise _missing_field_for(path, "header", field, fields, list(header))
        for record in reader:
            # reader.line_num is the physical line where this record ended (quoted newlines).
            yield f"line {reader.line_num}", record


def _arrow_records(path: Path, fmt: str, fields: list[str]) -> Iterator[tuple[str, dict]]:
    if fmt == "parquet":
        pq = require("pyarrow.parquet", "datasets", f"Reading {path} (parquet)")
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid and friends
            raise DataError(f"{path}: not a readable parquet file ({e}).") from e
        present = pf.schema_arrow.names
        _check_fields(path, fields, present)
        batches = (b.to_pydict() for b in pf.iter_batches(batch_size=_BATCH_ROWS, columns=fields))
    else:
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
        present = list(ds.column_names)
        _check_fields(path, fields, present)
        batches = ds.select_columns(fields).iter(batch_size=_BATCH_ROWS)

    row = 0
    for batch in batches:
        n = len(batch[fields[0]])
        for i in range(n):
            row += 1
            yield f"row {row}", {field: batch[field][i] for field in fields}


def _check_fields(path: Path, fields: list[str], present: list[str]) -> None:
    for field in fields:
        if field not in present:
            raise _missing_field_for(path, "columns", field, fields, present)


def _missing_field_for(
    path: Path, where: str, field: str, fields: list[str], present: list[str]
) -> DataError:
    # fields is [text_field] or [text_field, label_field]: the position says which recipe
    # key sets it, whatever the field is called.
    key = "data.text_field" if field == fields[0] else "eval.label_field"
    return DataError(
        f"{path} {where}: no field '{field}' (fields present: "
        f"{', '.join(map(str, present)) or 'none'}). Set {key} to one of them."
    )

