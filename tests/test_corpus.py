"""Corpus readers: every format, every error path, on real and tiny built files."""

from __future__ import annotations

import csv
import gzip
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import ROOT, write_jsonl

from lastlayer.corpus import DataError, read_labelled, read_texts

MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"

RECORDS = [
    {"id": 1, "body": "  First document.  ", "topic": "a"},
    {"id": 2, "body": "", "topic": "b"},  # empty: skipped and counted
    {"id": 3, "body": "Second document, with a comma.", "topic": 7},  # non-str label
    {"id": 4, "body": "Third\tdocument.", "topic": "a"},
]
EXPECTED_TEXTS = ["First document.", "Second document, with a comma.", "Third\tdocument."]
EXPECTED_LABELS = ["a", "7", "a"]


def _write_csv(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    return path


# ----------------------------------------------------------------------------- real data


def test_medical_abstracts_real_file():
    texts, labels = read_labelled(MEDICAL)
    assert len(texts) == len(labels) == 2888
    assert len(set(labels)) == 5
    assert "neoplasms" in labels
    assert texts[0].startswith("Obstructive sleep apnea")
    assert all(t == t.strip() and t for t in texts)
    assert read_texts(MEDICAL, max_docs=10) == texts[:10]


def test_module_imports_neither_torch_nor_datasets():
    code = ("import sys, lastlayer.corpus, lastlayer.evaluation.datasets; "
            "print('torch' in sys.modules, 'datasets' in sys.modules)")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert out.split() == ["False", "False"]


# ------------------------------------------------------------------------------ formats


def test_txt_one_document_per_nonempty_line(tmp_path, caplog):
    p = tmp_path / "c.txt"
    p.write_text("  alpha beta \n\n   \ngamma\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="lastlayer.corpus"):
        assert read_texts(p) == ["alpha beta", "gamma"]
    assert "skipped 2" in caplog.text
    assert read_texts(p, text_field="ignored_for_txt", max_docs=1) == ["alpha beta"]


def test_txt_gz(tmp_path):
    p = tmp_path / "c.txt.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("one\ntwo\n")
    assert read_texts(p) == ["one", "two"]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_jsonl_and_gz(tmp_path, name, caplog):
    p = write_jsonl(tmp_path / name, RECORDS)
    with caplog.at_level(logging.WARNING, logger="lastlayer.corpus"):
        assert read_texts(p, text_field="body") == EXPECTED_TEXTS
    assert "skipped 1" in caplog.text
    texts, labels = read_labelled(p, text_field="body", label_field="topic")
    assert texts == EXPECTED_TEXTS and labels == EXPECTED_LABELS


def test_jsonl_blank_lines_and_null_text(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": null}\n{"text": "b"}\n\n', encoding="utf-8")
    assert read_texts(p) == ["a", "b"]


def test_csv_with_quoted_newlines_and_bom(tmp_path):
    p = tmp_path / "c.csv"
    with open(p, "w", encoding="utf-8-sig", newline="") as f:  # Excel-style BOM
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerow(["line one\nline two", "x"])
        w.writerow(["", "y"])
        w.writerow(["third, with comma", "z"])
    texts, labels = read_labelled(p)
    assert texts == ["line one\nline two", "third, with comma"]
    assert labels == ["x", "z"]


def test_csv_custom_fields(tmp_path):
    p = _write_csv(tmp_path / "c.csv", RECORDS)
    texts, labels = read_labelled(p, text_field="body", label_field="topic", max_docs=2)
    assert texts == EXPECTED_TEXTS[:2] and labels == EXPECTED_LABELS[:2]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "c.parquet"
    table = pa.table(
        {
            "body": [r["body"] for r in RECORDS] + [None],
            "topic": [str(r["topic"]) for r in RECORDS] + ["n"],
        }
    )
    pq.write_table(table, p, row_group_size=2)  # several row groups / batches
    texts, labels = read_labelled(p, text_field="body", label_field="topic")
    assert texts == EXPECTED_TEXTS and labels == EXPECTED_LABELS
    assert read_texts(p, text_field="body", max_docs=1) == EXPECTED_TEXTS[:1]
    with pytest.raises(DataError, match=r"no field 'text' .*body, topic.*data\.text_field"):
        read_texts(p)


def test_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {
            "body": [r["body"] for r in RECORDS],
            "topic": [r["topic"] for r in RECORDS[:2]] + ["7", "a"],
        }
    )
    folder = tmp_path / "saved"
    ds.save_to_disk(str(folder))
    texts, labels = read_labelled(folder, text_field="body", label_field="topic")
    assert texts == EXPECTED_TEXTS and labels == EXPECTED_LABELS
    with pytest.raises(DataError, match=r"no field 'label' .*body, topic.*eval\.label_field"):
        read_labelled(folder, text_field="body")

    dd_folder = tmp_path / "dict"
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(dd_folder))
    with pytest.raises(DataError, match=r"DatasetDict with splits \['test', 'train'\]"):
        read_texts(dd_folder, text_field="body")
    assert read_texts(dd_folder / "train", text_field="body") == EXPECTED_TEXTS


# ------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_texts(tmp_path / "nope.jsonl")


def test_unknown_suffix_lists_supported(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("[]", encoding="utf-8")
    with pytest.raises(DataError, match=r"unknown file type '\.json'.*\.jsonl\.gz.*\.parquet"):
        read_texts(p)


def test_plain_folder_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        read_texts(tmp_path)


def test_missing_text_field_names_recipe_key(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", RECORDS)
    with pytest.raises(DataError) as e:
        read_texts(p)
    msg = str(e.value)
    assert "c.jsonl line 1" in msg and "no field 'text'" in msg
    assert "id, body, topic" in msg and "data.text_field" in msg


def test_missing_label_field_names_recipe_key(tmp_path):
    p = _write_csv(tmp_path / "c.csv", RECORDS)
    with pytest.raises(
        DataError,
        match=r"c\.csv header: no field 'label' \(fields present: "
        r"id, body, topic\)\. Set eval\.label_field",
    ):
        read_labelled(p, text_field="body")


def test_field_missing_in_a_later_line(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(DataError, match=r"line 2: no field 'text' \(fields present: txt\)"):
        read_texts(p)


def test_invalid_json_gives_line_number(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "ok"}\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.jsonl line 2: invalid JSON"):
        read_texts(p)


def test_json_line_not_an_object(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('["a list"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, got list"):
        read_texts(p)


def test_non_string_text(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [{"text": 3}])
    with pytest.raises(DataError, match=r"line 1: field 'text' holds a int, not a string"):
        read_texts(p)


def test_zero_documents(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [{"text": "  "}, {"text": ""}])
    with pytest.raises(DataError, match=r"no documents found \(2 record\(s\) had an empty"):
        read_texts(p)
    empty = tmp_path / "e.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no documents found"):
        read_texts(empty)


def test_empty_csv(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty CSV file"):
        read_texts(p)


def test_txt_has_no_labels(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match="has no labels"):
        read_labelled(p)


def test_empty_label(tmp_path):
    p = write_jsonl(
        tmp_path / "c.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": None}]
    )
    with pytest.raises(DataError, match=r"line 2: field 'label' is empty"):
        read_labelled(p)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_max_docs(tmp_path, bad):
    p = tmp_path / "c.txt"
    p.write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match="max_docs must be a positive integer"):
        read_texts(p, max_docs=bad)


def test_bad_gzip_and_bad_utf8(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    p.write_bytes(b"not gzip at all\n")
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_texts(p)
    q = tmp_path / "c.txt"
    q.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_texts(q)


def test_bad_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    p = tmp_path / "c.parquet"
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_texts(p)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)
