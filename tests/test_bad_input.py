"""Bad input to ``lastlayer train``: every case a clear error, never a traceback.

One table: a case's name, what it sets up (a corpus file, a recipe, an override) and the
fragment its message must hold. Each runs ``lastlayer train`` in-process (``cli.main``): a
clear error is exit status 2, one ``lastlayer train: error:`` line naming the file, key or
line and how to fix it, no traceback. The few inputs that are not errors (one enormous
line, no sentence boundary) are in the table too, with what the user sees instead.
docs/reliability.md lists the rows.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lastlayer.training.assemble as assemble
from lastlayer.cli import main

DOCS = [{"text": f"Document number {i} talks about topic {i % 3}. It has a second sentence. "
                 "And a third one, to be cropped.", "label": str(i % 3)} for i in range(24)]
HELD_OUT = [{"text": f"A held-out text, number {i}. Nothing else.", "label": str(i % 2)}
            for i in range(12)]


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


@dataclass
class Case:
    """One row: ``setup(tmp, monkeypatch)`` returns overrides (and may write a recipe)."""

    name: str
    setup: Callable[..., list[str]]
    expected: str  # a fragment of the error line (or of the output, when ``status`` is 0)
    status: int = 2
    marks: list = field(default_factory=list)


def train_on(make: Callable[[Path], Path]) -> Callable[..., list[str]]:
    """A setup that trains on the corpus ``make(tmp)`` writes."""
    return lambda tmp, mp: [f"data.train={make(tmp)}"]


def good(tmp: Path) -> Path:
    return jsonl(tmp / "good.jsonl", DOCS)


def override(*items: str) -> Callable[..., list[str]]:
    return lambda tmp, mp: [f"data.train={good(tmp)}", *items]


def eval_on(make: Callable[[Path], Path]) -> Callable[..., list[str]]:
    return lambda tmp, mp: [f"data.train={good(tmp)}", f"eval.data={make(tmp)}"]


def recipe_text(content: str | bytes) -> Callable[..., list[str]]:
    """A setup that writes the recipe file itself."""
    def setup(tmp: Path, mp) -> list[str]:
        text("recipe.yaml", content)(tmp)
        return [f"data.train={good(tmp)}"]
    return setup


def gz_truncated(tmp: Path) -> Path:
    raw = gzip.compress("".join(json.dumps(r) + "\n" for r in DOCS).encode())
    (tmp / "c.jsonl.gz").write_bytes(raw[: len(raw) // 2])
    return tmp / "c.jsonl.gz"


def output(kind: str, *more: str) -> Callable[..., list[str]]:
    """An output_dir that already holds something (``kind``)."""
    def setup(tmp: Path, mp) -> list[str]:
        out = tmp / "out"
        if kind == "file":
            out.write_text("my notes")
        elif kind in ("artifact", "folder"):
            out.mkdir()
            (out / ("lastlayer.json" if kind == "artifact" else "notes.txt")).write_text("{}")
        elif kind == "below a file":
            (tmp / "afile").write_text("x")
            out = tmp / "afile" / "out"
        elif kind == "not writable":  # as root, chmod would not stop a write: say it is so
            real = os.access
            mp.setattr(assemble.os, "access",
                       lambda p, mode, **kw: False if Path(p) == tmp else real(p, mode, **kw))
        return [f"data.train={good(tmp)}", f"output_dir={out}", *more]
    return setup


def no_bitsandbytes(tmp: Path, mp) -> list[str]:
    mp.setitem(sys.modules, "bitsandbytes", None)  # import fails, as where it cannot install
    return [f"data.train={good(tmp)}", "model.quantization=4bit"]


def text(name: str, content: str | bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path
    return make


def folder(tmp: Path) -> Path:
    (tmp / "corpus").mkdir()
    return tmp / "corpus"


CASES = [
    # ---- corpus (data.train)
    Case("missing file", train_on(lambda t: t / "missing.jsonl"), "no such file or folder"),
    Case("a directory", train_on(folder), "not written by datasets.Dataset.save_to_disk"),
    Case("empty file", train_on(text("c.txt", "")), "c.txt: no documents found"),
    Case("only blank lines", train_on(text("c.txt", "\n  \n\t\n")),
         "3 record(s) had an empty 'text'"),
    Case("non-UTF-8 bytes", train_on(text("c.txt", "caf\xe9 crème\n".encode("latin-1"))),
         "not valid UTF-8 text"),
    Case("binary file", train_on(text("c.txt", bytes(range(256)) * 8)), "a binary file"),
    Case("binary, valid UTF-8 with NULs", train_on(text("c.txt", b"ab\x00cd ef\n" * 9)),
         "c.txt line 1: holds NUL bytes"),
    Case("UTF-16 with a BOM", train_on(text("c.txt", "one doc. two\n".encode("utf-16"))),
         "UTF-16 text (it starts with a UTF-16 byte-order mark)"),
    Case("UTF-16 jsonl", train_on(text("c.jsonl", json.dumps(DOCS[0]).encode("utf-16"))),
         "iconv -f UTF-16 -t UTF-8"),
    Case("one enormous line (trains: truncated to max_length)",
         train_on(text("c.txt", "word " * 200_000 + "\n" + "\n".join(
             f"short document {i}" for i in range(9)))), "Saved ", status=0),
    Case("no sentence boundary (trains: crops cut at max_chars)",
         train_on(text("c.txt", "\n".join(f"doc {i} " + "lowercase words and no stop " * 20
                                          for i in range(10)))),
         "8 sentence crops, 0 short documents fell back", status=0),
    Case("misnamed text field", train_on(lambda t: jsonl(t / "c.jsonl", [{"body": "x"}] * 3)),
         "c.jsonl line 1: no field 'text' (fields present: body). Set data.text_field"),
    Case("text field missing later", train_on(lambda t: jsonl(t / "c.jsonl",
                                                              [DOCS[0], {"body": "x"}])),
         "c.jsonl line 2: no field 'text'"),
    Case("a number in the field", train_on(lambda t: jsonl(t / "c.jsonl",
                                                           [DOCS[0], {"text": 3}])),
         "line 2: field 'text' holds a int, not a string"),
    Case("a list in the field", train_on(lambda t: jsonl(t / "c.jsonl",
                                                         [DOCS[0], {"text": ["a"]}])),
         "line 2: field 'text' holds a list, not a string"),
    Case("only nulls in the field", train_on(lambda t: jsonl(t / "c.jsonl",
                                                             [{"text": None}] * 4)),
         "4 record(s) had an empty 'text'"),
    Case("broken JSON line", train_on(text("c.jsonl", json.dumps(DOCS[0]) + "\n{oops\n")),
         "c.jsonl line 2: invalid JSON"),
    Case("a JSON line that is not an object", train_on(text("c.jsonl", "[1, 2]\n")),
         "line 1: expected a JSON object, got list"),
    Case("a 5000-digit number in a JSON line", train_on(text("c.jsonl", "1" * 5000 + "\n")),
         "c.jsonl line 1: JSON this reader refuses"),
    Case("JSON nested 100000 deep", train_on(text("c.jsonl", "[" * 10**5 + "]" * 10**5)),
         "c.jsonl line 1: JSON this reader refuses"),
    Case("a lone surrogate in the text", train_on(text("c.jsonl", '{"text": "a \\ud800"}\n')),
         "half of a UTF-16 surrogate pair"),
    Case("truncated gzip", train_on(gz_truncated), "not a valid gzip file"),
    Case("gzip damaged inside", train_on(text("c.txt.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 20)),
         "c.txt.gz: not a valid gzip file (Error -3 while decompressing data"),
    Case("not gzip at all", train_on(text("c.jsonl.gz", b"plain text, not gzip\n")),
         "not a valid gzip file"),
    Case("CSV without the text column",
         train_on(text("c.csv", "body,label\n" + "".join(f"d {i},1\n" for i in range(5)))),
         "c.csv header: no field 'text' (fields present: body, label)"),
    Case("CSV with no header", train_on(text("c.csv", "")), "empty CSV file"),
    Case("parquet with the wrong schema",
         train_on(lambda t: parquet(t / "c.parquet", {"body": ["x", "y"]})),
         "c.parquet columns: no field 'text' (fields present: body)"),
    Case("parquet with numbers as text",
         train_on(lambda t: parquet(t / "c.parquet", {"text": [1, 2]})),
         "c.parquet row 1: field 'text' holds a int"),
    Case("not a parquet file", train_on(text("c.parquet", b"PAR1 nope")),
         "not a readable parquet file"),
    Case("unknown file type", train_on(text("c.docx", "x")), "unknown file type '.docx'"),
    Case("too few documents", train_on(text("c.txt", "only one document\n")),
         "only 1 training documents remain"),
    # ---- labelled evaluation file (eval.data)
    Case("eval labels missing", eval_on(lambda t: jsonl(
        t / "e.jsonl", [{"text": r["text"]} for r in HELD_OUT])),
        "e.jsonl line 1: no field 'label' (fields present: text). Set eval.label_field"),
    Case("eval label empty on one line", eval_on(lambda t: jsonl(
        t / "e.jsonl", [*HELD_OUT[:3], {**HELD_OUT[3], "label": None}])),
        "e.jsonl line 4: field 'label' is empty"),
    Case("eval file in .txt", eval_on(text("e.txt", "a\nb\n")), "has no labels"),
    Case("eval with one class only", eval_on(lambda t: jsonl(
        t / "e.jsonl", [{**r, "label": "a"} for r in HELD_OUT])), "one class"),
    # ---- recipe and overrides
    Case("invalid YAML", recipe_text("train: [1, 2\n"), "recipe.yaml is not valid YAML"),
    Case("a recipe that is not UTF-8", recipe_text(b"seed: \xff\n"),
         "recipe.yaml is not UTF-8 text (byte 6"),
    Case("not a mapping", recipe_text("- a\n- b\n"), "must be a YAML mapping"),
    Case("unknown section", recipe_text("trian: {max_steps: 3}\n"),
         "unknown key trian in the recipe; valid keys: adapter"),
    Case("unknown key", override("train.max_stepz=3"),
         "unknown key train.max_stepz in train; valid keys"),
    Case("wrong type", override("train.max_steps=abc"), "train.max_steps must be int, got 'abc'"),
    Case("an override without =", override("train.max_steps"),
         "must look like dotted.key=value"),
    Case("top_k 0", override("adapter.top_k=0"), "adapter.top_k must be >= 1, got 0"),
    Case("top_k negative", override("adapter.top_k=-2"), "adapter.top_k must be >= 1, got -2"),
    Case("top_k larger than the model", override("adapter.top_k=9"),
         "adapter.top_k=9 but BertModel has only 4 layers; set adapter.top_k to 1..4"),
    Case("LoRA target modules that do not exist", override("adapter.target_modules=[nope]"),
         "adapter.target_modules=['nope']: Suffix(es) ['nope'] match no nn.Linear"),
    Case("batch_size 1 (no negatives)", override("train.batch_size=1"),
         "train.batch_size must be >= 2: InfoNCE needs in-batch negatives"),
    Case("fp16 on a CPU", override("train.mixed_precision=fp16"), "fp16 on CPU"),
    Case("an unknown precision", override("train.mixed_precision=fp8"),
         "train.mixed_precision"),
    Case("quantization without bitsandbytes", no_bitsandbytes, "[quant]"),
    # ---- output folder
    Case("output_dir is a file", output("file"), "is a file, not an artifact folder"),
    Case("output_dir below a file", output("below a file"),
         "is a file, so no folder can be made below it"),
    Case("output_dir not writable", output("not writable"), "is not writable by this user"),
    Case("an existing artifact without overwrite", output("artifact"),
         "already holds an artifact; set overwrite=true"),
    Case("a user's folder, even with overwrite=true", output("folder", "overwrite=true"),
         "lastlayer never replaces it, even with overwrite=true"),
    Case("a user's file, even with overwrite=true", output("file", "overwrite=true"),
         "lastlayer never replaces it"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, saved_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n", encoding="utf-8")
    args = [f"model.name_or_path={saved_models['bert']}", "model.max_length=32",
            "eval.data=null", "adapter.top_k=2", "train.max_steps=2", "train.batch_size=4",
            "train.cpu=true", "train.routing_docs=0", f"output_dir={tmp_path / 'adapter'}"]
    args += case.setup(tmp_path, monkeypatch)  # after: its settings win
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != recipe}
    status = main(["train", str(recipe), *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert status == case.status, err
    if case.status == 0:
        assert case.expected in out
        return
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("lastlayer train: error: ") and case.expected in lines[0], lines
    assert not (tmp_path / "adapter").exists()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != recipe}
    assert after == before, "a refused run changes no file"
