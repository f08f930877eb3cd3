"""The corpus readers: the documents of a corpus, with their labels or ids.

:func:`read_texts` (training), :func:`read_labelled` (kNN evaluation) and
:func:`read_with_ids` (``lastlayer embed``) take the records of any format
(:mod:`lastlayer.corpus.formats`) through the same checks: texts are strings, stripped,
UTF-8; records with an empty text are skipped and counted (one warning); a missing label or
an inconsistent id field is a :class:`DataError` naming the file and the line or row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lastlayer.corpus.errors import DataError
from lastlayer.corpus.formats import Source, check_exists, format_of, iter_records, source_of
from lastlayer.corpus.hub_data import HubDataset

logger = logging.getLogger(__package__)  # "lastlayer.corpus", for every corpus reader


def read_texts(
    path: str | Path, text_field: str = "text", max_docs: int | None = None
) -> list[str]:
    """Read the documents of a corpus file.

    Args:
        path: Corpus file, ``save_to_disk`` folder or ``hf://`` Hub data set (formats: see
            :mod:`lastlayer.corpus`).
        text_field: Field holding the text (ignored for ``.txt``). Recipe key
            ``data.text_field``.
        max_docs: Keep only the first ``max_docs`` non-empty documents (``None``: all).

    Returns:
        The stripped, non-empty texts in file order.

    Raises:
        DataError: Missing file, unknown format, missing field, invalid JSON, a text that
            is not a string, or no documents at all.
    """
    texts, _ = read_with_field(path, text_field, None, max_docs)
    return texts


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
    texts, labels = read_with_field(path, text_field, label_field, max_docs)
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
    check_exists(path)
    fmt = format_of(path)
    if fmt == "txt" and id_required:
        raise DataError(f"{path}: a .txt file has no fields, so no '{id_field}' field: its "
                        f"ids are line numbers. Leave {keys[1]} unset, or use a .jsonl, .csv "
                        "or .parquet file.")
    ids: list[Any] = []
    texts: list[str] = []
    has_ids: bool | None = None
    skipped = 0
    records = iter_records(path, fmt, [text_field], [id_field], keys=(keys[0], keys[1]))
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


def read_with_field(
    path: str | Path | HubDataset, text_field: str, label_field: str | None,
    max_docs: int | None,
) -> tuple[list[str], list[str] | None]:
    """The texts and, with ``label_field``, each text's value of that field, as a string.

    What :func:`read_texts` (no ``label_field``: None for the values) and
    :func:`read_labelled` return; the evaluation readers take a split field through it too.

    Raises:
        DataError: As :func:`read_labelled`.
    """
    path = source_of(path)
    if max_docs is not None and (
        isinstance(max_docs, bool) or not isinstance(max_docs, int) or max_docs < 1
    ):
        raise DataError(f"{path}: max_docs must be a positive integer or None, got {max_docs!r}")
    check_exists(path)
    fmt = format_of(path)
    if fmt == "txt" and label_field is not None:
        raise DataError(
            f"{path}: a .txt file holds one document per line and has no labels. "
            f"Use a .jsonl, .csv or .parquet file with a '{label_field}' field."
        )

    # text first: the missing-field message (formats) tells the two apart by position.
    wanted = [text_field] if label_field is None else list(dict.fromkeys([text_field, label_field]))

    texts: list[str] = []
    labels: list[str] = []
    skipped = 0
    for where, record in iter_records(path, fmt, wanted):
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
