"""Corpus readers: one document per record, from the file formats people actually have.

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

The modules, bottom up: ``errors`` (:class:`DataError`), ``hub_data`` (``hf://`` ids and
opening them), ``formats`` (which format a path is, its records one by one, the file's
problems), ``read`` (the readers: texts, labels, ids, with the record checks).
"""

from lastlayer.corpus.errors import DataError
from lastlayer.corpus.formats import SUPPORTED_FORMATS, Source, source_of
from lastlayer.corpus.hub_data import (
    HUB_PREFIX,
    HUB_SYNTAX,
    HubDataset,
    is_hub_dataset,
    load_hub_dataset,
    parse_hub_dataset,
)
from lastlayer.corpus.read import read_labelled, read_texts, read_with_ids

__all__ = ["HUB_PREFIX", "HUB_SYNTAX", "SUPPORTED_FORMATS", "DataError", "HubDataset", "Source",
           "is_hub_dataset", "load_hub_dataset", "parse_hub_dataset", "read_labelled",
           "read_texts", "read_with_ids", "source_of"]
