"""``lastlayer embed``: formats, ids, input order, resuming, overwriting, errors, processes.

The encoder is ``helpers.plain_embedder.PlainEmbedder``: the Embedder's API on tiny real
models (a saved 4-layer BERT, two perturbed LoRA artifacts on it), without a shared trunk.
Expected vectors are each text encoded alone, so a row in the wrong place, under the wrong
adapter, or a shard encoded twice shows.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.artifacts import artifact_meta
from helpers.data import MEDICAL, ROOT, write_jsonl
from helpers.plain_embedder import Interrupted, PlainEmbedder
from helpers.processes import child_env, launcher

import lastlayer.inference
from lastlayer.cli import main
from lastlayer.config import AdapterConfig, ModelConfig
from lastlayer.corpus import DataError
from lastlayer.inference.embed import (
    EmbedError,
    check_adapter_choice,
    parse_adapters,
    plan_embedding,
    run_embedding,
)

SHARD = 8
DOCS = 29  # 4 shards: 8, 8, 8, 5


def _medical(n: int) -> list[str]:
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"][: 40 + 13 * i].strip() for i in range(n)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return _medical(DOCS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts) -> Path:
    """jsonl with string ids; an empty record in the middle (skipped)."""
    records = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    records.insert(5, {"id": "empty", "text": "   "})
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", records)


@pytest.fixture(scope="module")
def artifacts(saved_models, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA artifacts (top-2) on the saved tiny BERT, moved apart from the base."""
    from lastlayer.core.adapters import attach, save_adapter
    from lastlayer.core.encoder import load_encoder

    base = saved_models["bert"]
    out = {}
    for seed, name in enumerate(("a", "b"), start=1):
        encoder = load_encoder(ModelConfig(name_or_path=str(base), max_length=32), "cpu")
        attach(encoder, AdapterConfig(kind="lora", top_k=2))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in encoder.model.parameters():
                if param.requires_grad:
                    param.add_(0.2 * torch.randn(param.shape, generator=generator))
        meta = artifact_meta(str(base), kind="lora", top_k=2, num_layers=4, max_length=32)
        meta = dataclasses.replace(  # the real base's fingerprint, or the Embedder refuses it
            meta, base=dataclasses.replace(meta.base, fingerprint=encoder.fingerprint))
        out[name] = save_adapter(encoder.model, tmp_path_factory.mktemp("art") / name,
                                 files={"lastlayer.json": meta.to_json()})
    return out


@pytest.fixture(scope="module")
def shared(saved_models, artifacts) -> PlainEmbedder:
    embedder = PlainEmbedder(saved_models["bert"])
    for name, path in artifacts.items():
        embedder.load(path, name)
    return embedder


@pytest.fixture
def embedder(shared, alone) -> PlainEmbedder:
    """The module's embedder with a clean call log and no interruption planned (after the
    reference vectors, which it encodes too)."""
    shared.calls, shared.fail_on_call = [], None
    return shared


@pytest.fixture(scope="module")
def alone(shared, texts) -> dict[str | None, np.ndarray]:
    """Every text encoded on its own, under the base and each adapter."""
    return {name: np.concatenate([shared.encode([t], adapter=name).vectors for t in texts])
            for name in (None, "a", "b")}


def read_output(path: Path) -> tuple[list | None, list | None, np.ndarray]:
    """(ids, adapters, vectors) of an output file (.npy: vectors only)."""
    if path.suffix == ".npy":
        return None, None, np.load(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    vectors = np.array([r["vector"] for r in rows], dtype=np.float32)
    return [r["id"] for r in rows], [r["adapter"] for r in rows], vectors


def embed(embedder, corpus, output, progress: bool = False, **kwargs) -> Path:
    kwargs.setdefault("shard_size", SHARD)
    used = kwargs.get("adapter") or kwargs.get("route")  # else: the base model, no adapters
    job = plan_embedding(corpus, output, adapter_names=list(embedder.adapters) if used else [],
                         **kwargs)
    return run_embedding(job, embedder, progress=progress)


# ---------------------------------------------------------------------------------------
# Formats, ids, order


def test_every_format_round_trips_ids_adapters_and_vectors_in_input_order(
        embedder, corpus, texts, alone, tmp_path):
    routed = embedder.route(texts)
    assert {None, "a", "b"} <= set(routed), "the routing rule should mix all three"
    expected = np.stack([alone[name][i] for i, name in enumerate(routed)])
    outputs = {}
    for suffix in (".npy", ".parquet", ".jsonl"):
        out = embed(embedder, corpus, tmp_path / f"routed{suffix}", route=True)
        assert not (tmp_path / f"routed{suffix}.parts").exists()
        ids, adapters, vectors = outputs[suffix] = read_output(out)
        assert vectors.dtype == np.float32 and vectors.shape == (DOCS, 32)
        # Input order and the routed adapter per row (encoded alone: other padding, so not
        # bit-equal; a row out of place or under another adapter is off by ~0.1).
        np.testing.assert_allclose(vectors, expected, rtol=0, atol=1e-5)
        if suffix != ".npy":
            assert ids == [f"doc-{i}" for i in range(DOCS)]
            assert adapters == routed
    # The adapters matter, and all formats hold the very same float32 values.
    assert np.abs(alone["a"] - alone[None]).max() > 1e-2
    for suffix in (".parquet", ".jsonl"):
        np.testing.assert_array_equal(outputs[suffix][2], outputs[".npy"][2])
    # One encode call per shard, routed per row.
    assert [len(c) for c in embedder.calls] == [8, 8, 8, 5] * 3


def test_parquet_columns_and_types(embedder, corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(embed(embedder, corpus, tmp_path / "v.parquet", adapter="b"))
    assert schema.names == ["id", "adapter", "vector"]
    assert schema.field("id").type == pa.string()
    assert schema.field("vector").type == pa.list_(pa.float32(), 32)
    _, adapters, _ = read_output(tmp_path / "v.parquet")
    assert adapters == ["b"] * DOCS


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl-int-ids"])
def test_ids_are_row_numbers_or_the_id_field(embedder, texts, alone, tmp_path, fmt):
    docs = texts[:6]
    if fmt == "txt":
        path = tmp_path / "docs.txt"
        path.write_text("\n".join([docs[0], "", *docs[1:]]) + "\n", encoding="utf-8")
        want = [0, 2, 3, 4, 5, 6]  # 0-based line numbers; line 1 is empty
    elif fmt == "csv":
        import csv

        path = tmp_path / "docs.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["body", "label"])
            writer.writerows([[docs[0], "x"], ["", "x"], *[[d, "y"] for d in docs[1:]]])
        want = [0, 2, 3, 4, 5, 6]  # records, counting the empty one
    else:
        path = write_jsonl(tmp_path / "docs.jsonl",
                           [{"id": 100 + i, "text": d} for i, d in enumerate(docs)])
        want = [100, 101, 102, 103, 104, 105]
    field = "body" if fmt == "csv" else "text"
    out = embed(embedder, path, tmp_path / "v.parquet", text_field=field, shard_size=4)
    ids, adapters, vectors = read_output(out)
    assert ids == want and adapters == [None] * 6
    np.testing.assert_allclose(vectors, alone[None][:6], rtol=0, atol=1e-5)
    if fmt == "jsonl-int-ids":
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert pq.read_schema(out).field("id").type == pa.int64()


def test_id_field_by_name_must_exist_and_be_on_every_record(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"key": "k1", "text": "one"},
                                              {"text": "two"}])
    with pytest.raises(DataError, match="no field 'uid'.*id_field"):
        plan_embedding(path, tmp_path / "o.npy", id_field="uid")
    with pytest.raises(DataError, match="line 2: field 'key' is missing"):
        plan_embedding(path, tmp_path / "o.npy", id_field="key")
    txt = tmp_path / "d.txt"
    txt.write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(DataError, match="no fields"):
        plan_embedding(txt, tmp_path / "o.npy", id_field="id")


@pytest.mark.parametrize("with_ids", [True, False])
def test_parquet_and_save_to_disk_inputs_keep_their_ids(texts, tmp_path, with_ids):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lastlayer.corpus import read_with_ids

    columns = {"text": [texts[0], None, *texts[1:4]], "label": list("xyzzy")}
    if with_ids:
        columns["id"] = [7, 8, 9, 10, 11]
    pq.write_table(pa.table(columns), tmp_path / "d.parquet")
    datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "saved"))
    want = [7, 9, 10, 11] if with_ids else [0, 2, 3, 4]  # the null text is skipped
    for path in (tmp_path / "d.parquet", tmp_path / "saved"):
        assert read_with_ids(path) == (want, texts[:4])


def test_ids_of_mixed_types_become_strings(tmp_path):
    from lastlayer.corpus import read_with_ids

    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "text": "one"},
                                              {"id": "b", "text": "two"}])
    assert read_with_ids(path) == (["1", "b"], ["one", "two"])


# ---------------------------------------------------------------------------------------
# Resuming


def _interrupt(embedder, corpus, out, on_call: int, **kwargs) -> None:
    embedder.calls, embedder.fail_on_call = [], on_call
    with pytest.raises(Interrupted):
        embed(embedder, corpus, out, **kwargs)
    embedder.calls, embedder.fail_on_call = [], None


def test_an_interrupted_run_resumes_where_it_stopped(embedder, corpus, texts, tmp_path):
    ref = embed(embedder, corpus, tmp_path / "ref.jsonl", adapter="a")
    out = tmp_path / "out.jsonl"
    _interrupt(embedder, corpus, out, on_call=3, adapter="a")  # shards 0 and 1 are done
    parts = tmp_path / "out.jsonl.parts"
    assert not out.exists()
    assert sorted(p.name for p in parts.iterdir()) == [
        "job.json", "shard-000000.npz", "shard-000001.npz"]

    embed(embedder, corpus, out, adapter="a", progress=True)
    assert embedder.calls == [texts[16:24], texts[24:]], "finished shards were encoded again"
    assert out.read_bytes() == ref.read_bytes()
    assert not parts.exists()


@pytest.mark.parametrize("failing", ["shard", "output"])
def test_a_full_disk_keeps_the_finished_shards_and_the_run_resumes(
        embedder, corpus, texts, tmp_path, monkeypatch, failing):
    """ENOSPC while writing a shard (the 3rd) or the assembled output: a clear error that
    says what is kept, no half-written file under a final name, and the same command then
    resumes to the same bytes."""
    import errno
    import os

    import lastlayer.inference.embed.output as embed_output
    from lastlayer.inference.embed import EmbedError

    ref = embed(embedder, corpus, tmp_path / "ref.jsonl", adapter="a")
    out, parts = tmp_path / "out.jsonl", tmp_path / "out.jsonl.parts"
    real_savez, real_writer = np.savez, embed_output._write_jsonl
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if failing == "output" or len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(*args, **kwargs)

    if failing == "shard":
        monkeypatch.setattr(np, "savez", full_disk)
    else:
        monkeypatch.setattr(embed_output, "_write_jsonl", lambda job, path: full_disk())
    with pytest.raises(EmbedError, match="No space left on device; the finished shards are "
                                         "kept in"):
        embed(embedder, corpus, out, adapter="a")
    assert not out.exists()
    done = sorted(p.name for p in parts.iterdir())
    assert done == (["job.json", "shard-000000.npz", "shard-000001.npz"] if failing == "shard"
                    else ["job.json"] + [f"shard-00000{i}.npz" for i in range(4)])
    monkeypatch.setattr(np, "savez", real_savez)
    monkeypatch.setattr(embed_output, "_write_jsonl", real_writer)
    embedder.calls = []
    embed(embedder, corpus, out, adapter="a")
    assert embedder.calls == ([texts[16:24], texts[24:]] if failing == "shard" else [])
    assert out.read_bytes() == ref.read_bytes() and not parts.exists()


def test_a_run_resumes_with_another_batch_size(embedder, corpus, texts, alone, tmp_path):
    out = tmp_path / "out.npy"
    _interrupt(embedder, corpus, out, on_call=2, adapter="b")
    embed(embedder, corpus, out, adapter="b", batch_size=3)  # e.g. after running out of memory
    assert embedder.calls == [texts[8:16], texts[16:24], texts[24:]]
    np.testing.assert_allclose(np.load(out), alone["b"], rtol=0, atol=1e-5)


def test_damaged_shards_are_redone(embedder, corpus, texts, tmp_path):
    ref = embed(embedder, corpus, tmp_path / "ref.npy", route=True)
    out = tmp_path / "out.npy"
    _interrupt(embedder, corpus, out, on_call=4, route=True)  # shards 0, 1, 2 are done
    parts = tmp_path / "out.npy.parts"
    # shard 0: a valid file with too few vectors; shard 1: cut in half; shard 2 intact.
    np.savez(parts / "shard-000000.npz", vectors=np.zeros((3, 32), np.float32),
             adapters=np.array(["", "", ""]))
    shard1 = parts / "shard-000001.npz"
    shard1.write_bytes(shard1.read_bytes()[: shard1.stat().st_size // 2])

    embed(embedder, corpus, out, route=True)
    assert embedder.calls == [texts[0:8], texts[8:16], texts[24:]]
    np.testing.assert_array_equal(np.load(out), np.load(ref))


def test_parts_of_another_job_are_refused_or_discarded_with_overwrite(
        embedder, corpus, texts, alone, tmp_path):
    out = tmp_path / "out.parquet"
    _interrupt(embedder, corpus, out, on_call=2, adapter="a")
    with pytest.raises(EmbedError, match=r"another embedding job \(it differs in: adapter\)"):
        embed(embedder, corpus, out, adapter="b")
    with pytest.raises(EmbedError, match="shard_size"):
        embed(embedder, corpus, out, adapter="a", shard_size=5)
    assert embedder.calls == []

    embed(embedder, corpus, out, adapter="b", overwrite=True)
    assert [len(c) for c in embedder.calls] == [8, 8, 8, 5]  # everything, from scratch
    np.testing.assert_allclose(read_output(out)[2], alone["b"], rtol=0, atol=1e-5)


def test_a_folder_that_is_not_ours_is_never_deleted(embedder, corpus, tmp_path):
    parts = tmp_path / "out.npy.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(EmbedError, match="not a work folder of lastlayer embed"):
        embed(embedder, corpus, tmp_path / "out.npy", overwrite=True)
    assert (parts / "notes.txt").read_text(encoding="utf-8") == "mine"


# ---------------------------------------------------------------------------------------
# Overwriting and errors


def test_an_existing_output_is_kept_unless_overwrite(embedder, corpus, alone, tmp_path):
    out = tmp_path / "v.npy"
    np.save(out, np.ones((2, 2), np.float32))
    with pytest.raises(EmbedError, match="exists; pass --overwrite"):
        embed(embedder, corpus, out)
    assert embedder.calls == []
    # With overwrite, the old file stays until the new one is complete.
    _interrupt(embedder, corpus, out, on_call=2, overwrite=True)
    np.testing.assert_array_equal(np.load(out), np.ones((2, 2), np.float32))
    embed(embedder, corpus, out, overwrite=True)
    np.testing.assert_allclose(np.load(out), alone[None], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, match", [
    ("v.csv", r"unknown output type '\.csv'.*\.npy, \.parquet, \.jsonl"),
    ("vectors", "unknown output type 'vectors'"),
    ("v.npz", r"unknown output type '\.npz'"),
])
def test_bad_output_suffix(corpus, tmp_path, name, match):
    with pytest.raises(EmbedError, match=match):
        plan_embedding(corpus, tmp_path / name)


def test_missing_text_field_and_bad_sizes(corpus, tmp_path):
    with pytest.raises(DataError, match="no field 'body'.*Set text_field"):
        plan_embedding(corpus, tmp_path / "v.npy", text_field="body")
    with pytest.raises(DataError, match="no such file"):
        plan_embedding(tmp_path / "missing.jsonl", tmp_path / "v.npy")
    for size in (0, -1, 1.5):
        with pytest.raises(EmbedError, match="shard size must be a positive integer"):
            plan_embedding(corpus, tmp_path / "v.npy", shard_size=size)
    (tmp_path / "folder.npy").mkdir()
    with pytest.raises(EmbedError, match="is a folder"):
        plan_embedding(corpus, tmp_path / "folder.npy")


def test_adapter_choices_are_checked():
    check_adapter_choice([], None, False)
    check_adapter_choice(["a"], "a", False)
    check_adapter_choice(["a"], None, True)
    with pytest.raises(EmbedError, match="not both"):
        check_adapter_choice(["a"], "a", True)
    with pytest.raises(EmbedError, match=r"'c': no adapter of that name \(loaded: a, b\)"):
        check_adapter_choice(["a", "b"], "c", False)
    with pytest.raises(EmbedError, match="--route needs adapters"):
        check_adapter_choice([], None, True)
    with pytest.raises(EmbedError, match="neither --adapter-for-all NAME nor --route"):
        check_adapter_choice(["a"], None, False)
    assert parse_adapters(["a=x/y", " b = z=w "]) == {"a": "x/y", "b": "z=w"}
    for bad in (["x/y"], ["=x"], ["a="]):
        with pytest.raises(EmbedError, match="expected NAME=PATH"):
            parse_adapters(bad)
    with pytest.raises(EmbedError, match="given twice"):
        parse_adapters(["a=x", "a=y"])


# ---------------------------------------------------------------------------------------
# The command line (the Embedder replaced by the plain one)


@pytest.fixture
def cli_embedder(monkeypatch):
    monkeypatch.setattr(lastlayer.inference, "Embedder", PlainEmbedder, raising=False)
    before = len(PlainEmbedder.instances)
    yield lambda: PlainEmbedder.instances[before:]


def test_cli_embeds_with_an_adapter_for_all(cli_embedder, saved_models, artifacts, corpus,
                                            alone, tmp_path, capsys):
    out = tmp_path / "v.jsonl"
    argv = ["embed", "--model", str(saved_models["bert"]), "--adapter", f"a={artifacts['a']}",
            "--adapter", f"b={artifacts['b']}", "--adapter-for-all", "a", "--input",
            str(corpus), "--output", str(out), "--shard-size", "8", "--no-progress"]
    assert main(argv) == 0
    ids, adapters, vectors = read_output(out)
    assert ids == [f"doc-{i}" for i in range(DOCS)] and adapters == ["a"] * DOCS
    np.testing.assert_allclose(vectors, alone["a"], rtol=0, atol=1e-5)
    (made,) = cli_embedder()
    assert sorted(made.adapters) == ["a", "b"]

    # Again: the output exists. Exit 2 with a message, before any model is loaded.
    capsys.readouterr()
    assert main(argv) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert len(cli_embedder()) == 1


@pytest.mark.parametrize("extra, message", [
    (["--output", "v.txt"], "unknown output type"),
    (["--adapter", "a", "--route"], "expected NAME=PATH"),
    (["--adapter", "a=x", "--adapter-for-all", "b"], "no adapter of that name"),
    (["--route"], "--route needs adapters"),
    (["--text-field", "body"], "Set --text-field"),
    (["--id-field", "uid"], "Set --id-field"),
])
def test_cli_user_errors_exit_2_before_loading(cli_embedder, corpus, tmp_path, capsys,
                                               extra, message):
    argv = ["embed", "--model", "unused", "--input", str(corpus), "--output",
            str(tmp_path / "v.npy"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lastlayer embed: error:") and message in err
    assert cli_embedder() == []


def test_cli_adapter_options_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["embed", "--model", "m", "--input", "i", "--output", "o.npy", "--route",
              "--adapter-for-all", "a"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Several processes: torchrun --nproc_per_node 2 equals one process, bit for bit.


def _launch(args: list[str], processes: int) -> subprocess.Popen:
    return subprocess.Popen([*launcher(processes), "-m", "helpers.embed_worker", *args],
                            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(procs: dict, outputs: dict) -> None:
    """Wait for each launched command (2 minutes at most); each must exit 0 and write its
    output, else its log is shown."""
    for n, proc in procs.items():
        try:
            log, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
        assert proc.returncode == 0 and outputs[n].is_file(), f"{n} process(es):\n{log}"


@pytest.mark.distributed
def test_two_processes_write_what_one_writes(saved_models, artifacts, corpus, texts,
                                             tmp_path):
    outputs, procs = {}, {}
    for n in (2, 1):
        outputs[n] = tmp_path / f"p{n}.parquet"
        procs[n] = _launch([str(tmp_path / f"calls{n}"), "embed", "--model",
                            str(saved_models["bert"]), "--adapter", f"a={artifacts['a']}",
                            "--adapter", f"b={artifacts['b']}", "--route", "--input",
                            str(corpus), "--output", str(outputs[n]), "--shard-size",
                            str(SHARD), "--no-progress"], n)
    _wait_for(procs, outputs)

    two, one = read_output(outputs[2]), read_output(outputs[1])
    assert two[0] == one[0] == [f"doc-{i}" for i in range(DOCS)]
    assert two[1] == one[1] and {None, "a", "b"} <= set(one[1])
    np.testing.assert_array_equal(two[2], one[2])
    # Each process embedded its own shards, once: 0 and 2, then 1 and 3.
    calls = {rank: json.loads((tmp_path / f"calls2.{rank}.json").read_text())
             for rank in (0, 1)}
    assert calls[0] == [texts[0:8], texts[16:24]]
    assert calls[1] == [texts[8:16], texts[24:]]


@pytest.mark.parametrize("kill_at", ["written:2", "writing:3"])
def test_a_killed_embed_resumes_from_its_last_finished_shard(saved_models, artifacts, corpus,
                                                             texts, tmp_path, kill_at):
    """SIGKILL after the 2nd shard was written, or while the 3rd was half written: the
    same command then embeds only the shards not finished and writes the same bytes."""
    def command(out: Path, calls: str, kill: str | None = None) -> subprocess.CompletedProcess:
        env = child_env() | ({"LASTLAYER_TEST_KILL_AT": kill} if kill else {})
        return subprocess.run(
            [*launcher(1), "-m", "helpers.embed_worker", str(tmp_path / calls), "embed",
             "--model", str(saved_models["bert"]), "--adapter", f"a={artifacts['a']}",
             "--adapter-for-all", "a", "--input", str(corpus), "--output", str(out),
             "--shard-size", str(SHARD), "--no-progress"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    assert command(ref, "ref").returncode == 0
    killed = command(out, "killed", kill_at)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert not out.exists()
    resumed = command(out, "resumed")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert out.read_bytes() == ref.read_bytes()
    assert json.loads((tmp_path / "resumed.0.json").read_text()) == [texts[16:24], texts[24:]]


# ---------------------------------------------------------------------------------------
# The real Embedder (shared trunk) through the real command.


def _real_cli(saved_models, artifacts, corpus, out, *extra) -> list[str]:
    return ["embed", "--model", str(saved_models["bert"]), "--adapter",
            f"a={artifacts['a']}", "--adapter-for-all", "a", "--input", str(corpus),
            "--output", str(out), "--shard-size", str(SHARD), "--no-progress", "--cpu", *extra]


def test_real_cli_with_the_embedder(saved_models, artifacts, corpus, alone, tmp_path):
    from lastlayer.inference import Embedder

    assert lastlayer.inference.Embedder is Embedder and Embedder is not PlainEmbedder
    out = tmp_path / "v.parquet"
    assert main(_real_cli(saved_models, artifacts, corpus, out)) == 0
    ids, adapters, vectors = read_output(out)
    assert ids == [f"doc-{i}" for i in range(DOCS)] and adapters == ["a"] * DOCS
    # The shared trunk + private top blocks give plain PEFT's vectors.
    np.testing.assert_allclose(vectors, alone["a"], rtol=0, atol=1e-5)


def test_real_cli_refuses_to_route_without_signatures(saved_models, artifacts, corpus,
                                                       tmp_path, capsys):
    argv = _real_cli(saved_models, artifacts, corpus, tmp_path / "v.jsonl")
    argv[argv.index("--adapter-for-all"):argv.index("--adapter-for-all") + 2] = ["--route"]
    assert main(argv) == 2
    assert "none of the adapters (a) holds a routing signature" in capsys.readouterr().err
    assert not (tmp_path / "v.jsonl.parts").exists()


@pytest.mark.distributed
def test_two_processes_of_the_real_command_write_what_one_writes(
        saved_models, artifacts, corpus, alone, tmp_path):
    outputs, procs = {}, {}
    for n in (2, 1):
        outputs[n] = tmp_path / f"p{n}.npy"
        cmd = [*launcher(n), "-m", "lastlayer", *_real_cli(saved_models, artifacts, corpus,
                                                           outputs[n])]
        procs[n] = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    _wait_for(procs, outputs)
    two, one = np.load(outputs[2]), np.load(outputs[1])
    np.testing.assert_allclose(one, alone["a"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(two, one)
