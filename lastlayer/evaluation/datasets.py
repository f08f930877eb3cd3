"""Evaluation data sets: the held-out labelled sample, BEIR retrieval folders, and a
labelled file's own train/test split.

The held-out sample (:func:`load_eval_set`) is what training compares base and adapter on
and what ``lastlayer probe`` scores layers on; the rest is what ``lastlayer eval`` reads
besides plain labelled files (``lastlayer.corpus``).
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lastlayer.config import EvalConfig
from lastlayer.corpus import (
    DataError,
    HubDataset,
    Source,
    is_hub_dataset,
    load_hub_dataset,
    read_labelled,
    source_of,
)
from lastlayer.corpus.formats import format_of, jsonl_records, open_text
from lastlayer.corpus.read import read_with_field
from lastlayer.extras import require

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------- the held-out sample


@dataclass
class EvalSet:
    """Labelled documents held out of training, on which base and adapter are compared."""

    texts: list[str]
    labels: list[str]
    source: str


def load_eval_set(cfg: EvalConfig, seed: int) -> EvalSet | None:
    """A seeded random sample of ``cfg.max_docs`` labelled documents, or None without data.

    Training holds this sample out and reports kNN on it; ``lastlayer probe`` and
    ``lastlayer eval`` draw the same sample from the same data, ``max_docs`` and seed.

    Raises:
        DataError: The file cannot be read, or its sample holds one class only (a kNN
            accuracy on it would be 1.0 and mean nothing).
    """
    if cfg.data is None:
        return None
    texts, labels = read_labelled(cfg.data, cfg.text_field, cfg.label_field)
    keep = sample_rows(len(texts), cfg.max_docs, seed)
    if keep is not None:
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    if len(set(labels)) < 2:
        raise DataError(
            f"{cfg.data}: every document has the one class {labels[0]!r} in field "
            f"'{cfg.label_field}', so a kNN accuracy would mean nothing; use a file with at "
            "least 2 classes, or set eval.label_field to the field that holds them."
        )
    return EvalSet(texts, labels, cfg.data)


def sample_rows(n: int, max_docs: int | None, seed: int) -> np.ndarray | None:
    """Rows of the seeded ``max_docs`` sample of ``n`` documents (None: keep them all).

    The one sampling rule of training's held-out set, ``lastlayer eval`` and ``probe``.
    """
    if max_docs is None or max_docs >= n:
        return None
    return np.random.default_rng(seed).choice(n, size=max_docs, replace=False)


# ------------------------------------------------------------------ evaluation data sets
#
# What ``lastlayer eval`` reads besides labelled files: the data set's own train/test split
# (a ``split`` field), and retrieval sets in the BEIR layout.

BEIR_LAYOUT = (
    "a BEIR folder holds corpus.jsonl (fields _id, title, text), queries.jsonl (fields _id, "
    "text) and qrels/<split>.tsv (header query-id<TAB>corpus-id<TAB>score)"
)
QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class BeirData:
    """A BEIR retrieval set, as read by :func:`read_beir`.

    ``docs[i]`` is ``title + " " + text`` (stripped) of the document ``doc_ids[i]``, the text
    BEIR embeds for sentence-transformers models. ``queries`` holds only the judged queries
    (those named in the qrels), in file order.
    """

    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> corpus id -> graded relevance score


def dataset_kind(path: str | Path) -> str:
    """``"beir"`` for a folder in the BEIR layout, else ``"labelled"`` (read by read_labelled).

    Raises:
        DataError: A folder that has some BEIR files but not all of them (the message says
            which are missing).
    """
    if is_hub_dataset(path):
        return "labelled"
    path = Path(path)
    if not path.is_dir():
        return "labelled"
    found = {
        "corpus.jsonl": _beir_file(path, "corpus") is not None,
        "queries.jsonl": _beir_file(path, "queries") is not None,
        "qrels/": (path / "qrels").is_dir(),
    }
    if all(found.values()):
        return "beir"
    if any(found.values()):
        missing = ", ".join(name for name, ok in found.items() if not ok)
        raise DataError(f"{path}: looks like a BEIR folder but has no {missing}; {BEIR_LAYOUT}.")
    return "labelled"


def read_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Read a retrieval set in the BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``).

    ``.jsonl.gz`` files are read too. A document may lack ``title`` (taken as empty); a null
    ``text`` is read as empty (such a document is kept: it can still be retrieved). Qrels
    rows naming a query or a document that the folder does not hold are dropped, with a
    warning that counts them (BEIR's own loader fails on unknown queries).

    Args:
        folder: The BEIR folder.
        split: Which ``qrels/<split>.tsv`` to read (``test``, ``dev``, ``train``).

    Raises:
        DataError: Missing folder or file, invalid JSON, a missing ``_id`` / ``text`` field,
            a duplicate ``_id``, a qrels file without the BEIR header, a qrels row that
            is not 3 tab-separated fields with an integer score, or no judged query left.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; {BEIR_LAYOUT}.")
    corpus_file, queries_file = _beir_file(folder, "corpus"), _beir_file(folder, "queries")
    for name, file in (("corpus.jsonl", corpus_file), ("queries.jsonl", queries_file)):
        if file is None:
            raise DataError(f"{folder}: no {name}; {BEIR_LAYOUT}.")
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DataError(
            f"{folder}: no qrels/{split}.tsv (qrels splits here: {', '.join(have) or 'none'}); "
            f"{BEIR_LAYOUT}."
        )
    assert corpus_file is not None and queries_file is not None

    doc_ids: list[str] = []
    docs: list[str] = []
    for record in _beir_records(corpus_file, ("_id", "text")):
        doc_ids.append(record["_id"])
        title = record.get("title") or ""
        docs.append(f"{title} {record['text'] or ''}".strip())
    queries = {
        r["_id"]: (r["text"] or "").strip() for r in _beir_records(queries_file, ("_id", "text"))
    }
    qrels = _read_qrels(qrels_file)

    known_docs = set(doc_ids)
    unknown_queries = [q for q in qrels if q not in queries]
    unknown_docs = sum(d not in known_docs for q in qrels for d in qrels[q])
    if unknown_queries or unknown_docs:
        logger.warning(
            "%s: dropped qrels rows naming %d query id(s) missing from %s and %d document "
            "id(s) missing from %s", qrels_file, len(unknown_queries), queries_file.name,
            unknown_docs, corpus_file.name,
        )
    qrels = {
        q: {d: s for d, s in judged.items() if d in known_docs}
        for q, judged in qrels.items() if q in queries
    }
    qrels = {q: judged for q, judged in qrels.items() if judged}
    if not qrels:
        raise DataError(f"{qrels_file}: no judged query whose query and documents are here.")
    query_ids = [q for q in queries if q in qrels]
    return BeirData(doc_ids, docs, query_ids, [queries[q] for q in query_ids], qrels)


def read_splits(
    path: str | Path,
    text_field: str = "text",
    split_field: str = "split",
    max_docs: int | None = None,
) -> list[str] | None:
    """The data set's own split of each document, aligned with :func:`read_labelled`.

    Args:
        path: A labelled file (same formats as :func:`read_labelled`).
        text_field: Field holding the text (records with empty text are skipped, as there).
        split_field: Field holding the split name (e.g. ``train`` / ``test``).
        max_docs: As in :func:`read_labelled`.

    Returns:
        One split name per document, or None when the records have no ``split_field``
        (judged from the first record, or the header / schema).
    """
    path = source_of(path)
    if isinstance(path, Path) and not path.exists():
        return None
    if split_field not in _field_names(path):
        return None
    _, splits = read_with_field(path, text_field, split_field, max_docs)
    return splits


def _field_names(path: Source) -> list[str]:
    """The field names of a labelled file: its header, schema, or first JSON record."""
    if isinstance(path, HubDataset):
        return list(load_hub_dataset(path).column_names)
    fmt = format_of(path)
    if fmt == "txt":
        return []
    if fmt == "csv":
        with open_text(path) as f:
            return next(csv.reader(f), [])
    if fmt == "jsonl":
        for _, record in jsonl_records(path, []):
            return list(record)
        return []
    if fmt == "parquet":
        pq = require("pyarrow.parquet", "datasets", f"Reading {path} (parquet)")
        return list(pq.ParquetFile(path).schema_arrow.names)
    datasets = require("datasets", "datasets", f"Reading {path} (a save_to_disk folder)")
    return list(datasets.load_from_disk(str(path)).column_names)


def _beir_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _beir_records(path: Path, required: tuple[str, ...]) -> Iterator[dict]:
    """The records of a BEIR jsonl file, each with string ``_id`` and the required fields."""
    seen: set[str] = set()
    try:
        for where, record in jsonl_records(path, []):
            for field in required:
                if field not in record:
                    raise DataError(
                        f"{path} {where}: no field '{field}' (fields present: "
                        f"{', '.join(record) or 'none'}); {BEIR_LAYOUT}."
                    )
            for field in ("title", "text"):
                value = record.get(field)
                if value is not None and not isinstance(value, str):
                    raise DataError(
                        f"{path} {where}: field '{field}' holds a {type(value).__name__}, "
                        "not a string."
                    )
            record["_id"] = str(record["_id"])
            if record["_id"] in seen:
                raise DataError(f"{path} {where}: duplicate _id '{record['_id']}'.")
            seen.add(record["_id"])
            yield record
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text ({e}). Re-save the file as UTF-8.") from e
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: not a valid gzip file ({e}).") from e


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query id -> corpus id -> score`` from a BEIR qrels TSV file (header required)."""
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        lines = (line.rstrip("\r\n") for line in f)
        header = next(lines, "")
        if tuple(field.strip() for field in header.split("\t")) != QRELS_HEADER:
            raise DataError(
                f"{path} line 1: expected the header 'query-id<TAB>corpus-id<TAB>score', got "
                f"{header[:80]!r}. Add that header line (BEIR skips the first line unread)."
            )
        for lineno, line in enumerate(lines, 2):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                if len(fields) != 3:
                    raise ValueError
                query, doc, score = fields[0].strip(), fields[1].strip(), int(fields[2])
            except ValueError:
                raise DataError(
                    f"{path} line {lineno}: expected query-id<TAB>corpus-id<TAB>integer "
                    f"score, got {line[:80]!r}."
                ) from None
            qrels.setdefault(query, {})[doc] = score
    return qrels
