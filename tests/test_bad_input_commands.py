"""Bad input to every entry point but ``train``: a clear error, never a traceback.

Two tables. ``CLI_CASES`` runs a ``lastlayer`` command in-process (``cli.main``): a clear
error is exit status 2 and one ``lastlayer <command>: error:`` line (argparse's own
``usage`` + ``error:`` for a value outside a flag's menu) holding the row's fragment, and
no traceback. ``API_CASES`` calls the Python API (``Embedder``, ``Embedder.load``,
``load_recipe``): a clear error is a ``ValueError`` / ``OSError`` / ``KeyError`` (lastlayer's
own subclasses, which the CLI turns into exit 2) with the fragment in its message.
``validate`` is a report: one ``FAIL`` line per invalid recipe, on stdout, and exit 2.
The adapter rows damage a copy of a tiny LoRA artifact trained on the saved tiny BERT.
``tests/test_bad_input.py`` holds the ``train`` rows; docs/reliability.md lists both.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.artifacts import lora_artifact
from helpers.damage import (
    header,
    huge,
    metadata,
    renamed_to_bottom,
    weights,
    widened,
)
from helpers.data import ROOT, write_jsonl

from lastlayer.cli import _user_errors, main

LABELLED = [{"id": f"d{i}", "text": f"Document {i} is about topic {i % 2}.", "label": str(i % 2)}
            for i in range(12)]
SHIPPED = ROOT / "adapters" / "medical" / "minilm-l6_lora-top2_crop"


@pytest.fixture(scope="module")
def lora(saved_models, tmp_path_factory) -> Path:
    """A top-2 LoRA artifact on the saved tiny BERT (its real fingerprint)."""
    return lora_artifact(saved_models, tmp_path_factory.mktemp("art") / "tiny")


@dataclass
class Ctx:
    """What a row's setup may use: a scratch folder, the artifact, the saved models."""

    tmp: Path
    lora: Path
    models: dict[str, Path]

    def data(self, records: list[dict] | None = None) -> str:
        return str(write_jsonl(self.tmp / "d.jsonl", LABELLED if records is None else records))

    def copy(self, change: Callable[[Path], None] | None = None) -> str:
        """A copy of the artifact, changed by ``change(folder)``."""
        folder = self.tmp / "adapter"
        if not folder.exists():
            shutil.copytree(self.lora, folder)
        if change:
            change(folder)
        return str(folder)

    def embed(self, *more: str) -> list[str]:
        return ["embed", "--model", str(self.models["bert"]), "--input", self.data(),
                "--output", str(self.tmp / "out.jsonl"), *more]

    def serve(self, *more: str) -> list[str]:
        return ["serve", "--model", str(self.models["bert"]), *more]


def routing_of_another(folder: Path) -> None:
    shutil.copy(SHIPPED / "routing.safetensors", folder / "routing.safetensors")


def unlink(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


@dataclass
class Case:
    name: str
    argv: Callable[[Ctx], list[str]]
    expected: str


def eval_of(change: Callable[[Path], None] | None) -> Callable[[Ctx], list[str]]:
    return lambda c: ["eval", c.copy(change), "--data", c.data()]


CLI_CASES = [
    # ---- eval / probe flags
    Case("eval --k 0", lambda c: ["eval", c.copy(), "--data", c.data(), "--k", "0"],
         "--k must be >= 1, got 0"),
    Case("eval --batch-size 0", lambda c: ["eval", c.copy(), "--data", c.data(),
                                           "--batch-size", "0"], "--batch-size must be >= 1"),
    Case("eval --max-length -1", lambda c: ["eval", c.copy(), "--data", c.data(),
                                            "--max-length", "-1"], "--max-length must be >= 1"),
    Case("eval --max-docs 0", lambda c: ["eval", c.copy(), "--data", c.data(),
                                         "--max-docs", "0"], "--max-docs must be >= 1"),
    Case("eval --metric unknown", lambda c: ["eval", c.copy(), "--data", c.data(),
                                             "--metric", "manhattan"], "invalid choice"),
    Case("eval --k abc", lambda c: ["eval", c.copy(), "--data", c.data(), "--k", "abc"],
         "invalid int value"),
    Case("eval data missing", lambda c: ["eval", c.copy(), "--data", str(c.tmp / "no.jsonl")],
         "no.jsonl: no such file or folder"),
    Case("eval data with one class", lambda c: ["eval", c.copy(), "--data", c.data(
        [{**r, "label": "a"} for r in LABELLED])], "at least 2 labels"),
    Case("probe --k 0", lambda c: ["probe", c.copy(), "--k", "0"], "--k must be >= 1"),
    Case("probe --max-docs -3", lambda c: ["probe", c.copy(), "--max-docs", "-3"],
         "--max-docs must be >= 1, got -3"),
    # ---- embed flags and paths
    Case("embed --batch-size 0", lambda c: c.embed("--batch-size", "0"),
         "--batch-size must be >= 1"),
    Case("embed --shard-size 0", lambda c: c.embed("--shard-size", "0"),
         "--shard-size must be >= 1"),
    Case("embed output exists", lambda c: [*c.embed(), "--output", str(
        (c.tmp / "exists.npy").write_bytes(b"mine") and c.tmp / "exists.npy")],
        "exists; pass --overwrite"),
    Case("embed output is a folder", lambda c: [*c.embed(), "--output", str(c.tmp)],
         "unknown output type"),
    Case("embed unknown output format", lambda c: [*c.embed(), "--output",
                                                   str(c.tmp / "v.xyz")],
         "unknown output type '.xyz'"),
    Case("embed ids that repeat", lambda c: [*c.embed(), "--input", c.data(
        [{"id": "same", "text": "one"}, {"id": "other", "text": "two"},
         {"id": "same", "text": "three"}])], "the id 'same' (field 'id') is used by records 0 "
                                             "and 2"),
    Case("embed --adapter without NAME=", lambda c: c.embed("--adapter", c.copy(),
                                                            "--adapter-for-all", "x"),
         "expected NAME=PATH"),
    Case("embed --adapter-for-all unknown", lambda c: c.embed("--adapter-for-all", "nope"),
         "--adapter-for-all 'nope': no adapter of that name"),
    Case("embed input missing", lambda c: [*c.embed(), "--input", str(c.tmp / "no.jsonl")],
         "no such file"),
    Case("embed an adapter for another base",
         lambda c: ["embed", "--model", str(c.models["llama"]), "--input", c.data(), "--output",
                    str(c.tmp / "o.npy"), "--adapter", f"a={c.copy()}", "--adapter-for-all", "a"],
         "was trained on"),
    # ---- export
    Case("export --format unknown", lambda c: ["export", c.copy(), str(c.tmp / "x"),
                                               "--format", "onnx"], "invalid choice: 'onnx'"),
    Case("export into a user's folder", lambda c: ["export", c.copy(), str(
        (c.tmp / "mine").mkdir() or (c.tmp / "mine" / "notes.txt").write_text("x") and
        c.tmp / "mine")], "export never replaces it, even with --overwrite"),
    Case("export a damaged adapter", lambda c: ["export", c.copy(weights(lambda b: b[:-40])),
                                                str(c.tmp / "x")], "truncated or corrupt"),
    # ---- serve flags
    Case("serve --port 99999", lambda c: c.serve("--port", "99999"),
         "--port must be 0..65535, got 99999"),
    Case("serve --port -1", lambda c: c.serve("--port", "-1"), "--port must be 0..65535"),
    Case("serve --max-batch 0", lambda c: c.serve("--max-batch", "0"),
         "--max-batch must be >= 1"),
    Case("serve --max-length -1", lambda c: c.serve("--max-length", "-1"),
         "--max-length must be >= 1"),
    Case("serve --workers 0", lambda c: c.serve("--workers", "0"),
         "--workers must be >= 1"),
    Case("serve --encode-batch-size 0", lambda c: c.serve("--encode-batch-size", "0"),
         "--encode-batch-size must be >= 1"),
    Case("serve --batch-window-ms -1", lambda c: c.serve("--batch-window-ms", "-1"),
         "--batch-window-ms must be >= 0"),
    Case("serve --max-inputs above --max-queue", lambda c: c.serve("--max-inputs", "10",
                                                                   "--max-queue", "5"),
         "--max-inputs (10) cannot exceed --max-queue (5)"),
    Case("serve --api-key-env unset", lambda c: c.serve("--api-key-env", "LASTLAYER_NO_SUCH"),
         "that environment variable is not set"),
    Case("serve --adapters missing", lambda c: c.serve("--adapters", str(c.tmp / "none")),
         "no such directory"),
    Case("serve --log-level unknown", lambda c: c.serve("--log-level", "loud"),
         "invalid choice: 'loud'"),
    # ---- push, ls, validate, choose-k
    Case("push a bad repo id", lambda c: ["push", c.copy(), "not a repo"],
         "'not a repo' is not a Hub repo id"),
    Case("push a folder that is not an artifact", lambda c: ["push", str(c.tmp), "acme/x"],
         "not a lastlayer artifact"),
    Case("ls --root missing", lambda c: ["ls", "--root", str(c.tmp / "nowhere")],
         "no such folder"),
    Case("validate a missing recipe", lambda c: ["validate", str(c.tmp / "r.yaml")],
         "r.yaml does not exist"),
    Case("validate invalid YAML", lambda c: ["validate", str(
        (c.tmp / "r.yaml").write_text("a: [1\n") and c.tmp / "r.yaml")], "not valid YAML"),
    Case("choose-k a missing recipe", lambda c: ["choose-k", str(c.tmp / "r.yaml")],
         "r.yaml does not exist"),
    Case("choose-k an unknown key", lambda c: ["choose-k", str(
        (c.tmp / "r.yaml").write_text("{}\n") and c.tmp / "r.yaml"), "train.nope=1"],
        "unknown key train.nope"),
    # ---- model and adapter
    Case("a Hub id that cannot be resolved offline", lambda c: ["eval", "acme/no-such-model",
                                                                "--data", c.data()],
         "is neither a lastlayer adapter in the Hugging Face cache nor a loadable base model"),
    Case("a local model folder that does not exist", lambda c: [
        "eval", str(c.tmp / "no-model"), "--data", c.data()], "no-model': it is not a local path"),
    Case("truncated adapter_model.safetensors", eval_of(weights(lambda b: b[:-40])),
         "truncated or corrupt safetensors file"),
    Case("adapter_model.safetensors of zeros", eval_of(weights(lambda b: b"\0" * len(b))),
         "truncated or corrupt safetensors file"),
    Case("a header that claims a 100 GB tensor", eval_of(header(huge)),
         "ends at byte 102400000000 of a data area of"),
    Case("a tensor whose shape does not fit the base", eval_of(header(widened)),
         "has shape [4, 64] but this base needs [r, 32]"),
    Case("a tensor aimed at a bottom block", eval_of(header(renamed_to_bottom)),
         "is not in the top-2 blocks of this base"),
    Case("adapter weights missing", eval_of(unlink("adapter_model.safetensors")),
         "adapter_model.safetensors: missing"),
    Case("lastlayer.json missing (a bare PEFT folder)", eval_of(unlink("lastlayer.json")),
         "holds a PEFT adapter but no lastlayer.json"),
    Case("lastlayer.json malformed", eval_of(metadata("{not json")), "not valid JSON"),
    Case("lastlayer.json from a newer schema", eval_of(metadata(
        lambda d: d.update(schema_version=99))), "newer lastlayer"),
    Case("lastlayer.json with a wrong type", eval_of(metadata(
        lambda d: d["adapter"].update(top_k="two"))),
         "lastlayer.json: adapter.top_k must be a positive integer, got 'two'"),
    Case("top_k larger than the base", eval_of(metadata(
        lambda d: (d["adapter"].update(top_k=9), d["layers"].update(
            num_layers=12, trained_layers=list(range(3, 12)))))),
         "trains the top 9 blocks, but the base has 4"),
    Case("a routing file of another adapter", eval_of(routing_of_another),
         "belongs to another adapter"),
]


def boom_loader(kind: str) -> Callable[[Ctx], object]:
    """An API call for a row of :data:`API_CASES`."""
    def call(c: Ctx):
        from lastlayer.inference import Embedder

        if kind == "missing model":
            return Embedder("acme/no-such-model")
        if kind == "an adapter as the base":
            return Embedder(c.copy())
        if kind == "max_length 0":
            return Embedder(c.models["bert"], max_length=0)
        if kind == "missing recipe":
            from lastlayer.config import load_recipe
            return load_recipe(c.tmp / "missing.yaml")
        if kind == "recipe not a mapping":
            from lastlayer.config import load_recipe
            (c.tmp / "r.yaml").write_text("- a\n")
            return load_recipe(c.tmp / "r.yaml")
        embedder = Embedder(c.models["bert"], device="cpu")
        if kind == "load a missing folder":
            return embedder.load(c.tmp / "nowhere")
        if kind == "load a Hub id not in the cache":
            return embedder.load("acme/not-cached")
        if kind == "load other weights of the same base":
            return embedder.load(c.copy(metadata(lambda d: d["base"].update(
                fingerprint="ffffffffffffffff"))))
        if kind == "load a damaged header":
            return embedder.load(c.copy(header(widened)))
        if kind == "load twice under one name":
            embedder.load(c.copy(), "x")
            return embedder.load(c.copy(), "x")
        raise AssertionError(kind)
    return call


API_CASES = [
    ("Embedder(a Hub id that cannot be resolved offline)", "missing model",
     "acme/no-such-model"),
    ("Embedder(an adapter folder)", "an adapter as the base", "is an adapter, not a base model"),
    ("Embedder(max_length=0)", "max_length 0", "model.max_length must be >= 1, got 0"),
    ("load_recipe(a missing file)", "missing recipe", "missing.yaml does not exist"),
    ("load_recipe(not a mapping)", "recipe not a mapping", "must be a YAML mapping"),
    ("Embedder.load(a missing folder)", "load a missing folder",
     "nowhere is not an artifact folder"),
    ("Embedder.load(a Hub id not in the cache)", "load a Hub id not in the cache",
     "acme/not-cached: not in the Hugging Face cache"),
    ("Embedder.load(other weights of the same base)", "load other weights of the same base",
     "trained on other weights"),
    ("Embedder.load(a tensor that does not fit)", "load a damaged header",
     "has shape [4, 64]"),
    ("Embedder.load(a name already taken)", "load twice under one name", "already loaded"),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CLI_CASES])
def test_bad_command_input(case: Case, lora, saved_models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_for_push")
    argv = case.argv(Ctx(tmp_path, lora, saved_models))
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse: a value outside a flag's menu or type
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    assert status == 2, err
    if argv[0] == "validate":  # a report: one FAIL line per invalid recipe, on stdout
        fails = [line for line in out.splitlines() if line.startswith("FAIL ")]
        assert len(fails) == 1 and case.expected in fails[0], out
        return
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lastlayer {argv[0]}: error: "), lines[0]
    assert case.expected in lines[0], lines[0]


@pytest.mark.parametrize("name,kind,expected", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_api_input(name, kind, expected, lora, saved_models, tmp_path):
    with pytest.raises(_user_errors() + (ValueError, KeyError)) as caught:
        boom_loader(kind)(Ctx(tmp_path, lora, saved_models))
    assert expected in str(caught.value), caught.value


def test_the_two_tables_hold_60_cases_or_more():
    """The other commands and the API alone: `train`'s rows are in test_bad_input.py."""
    assert len(CLI_CASES) + len(API_CASES) >= 60
