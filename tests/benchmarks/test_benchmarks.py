"""The benchmarks (``python -m benchmarks.NAME``) and their harness (``benchmarks.bench``).

Every script runs its real code on tiny models and data sets for a step or two, and each
plan is checked for what it promises (every run once, the comparisons it reports all
measured, cheap answers first), not for its literal list. No timing assertions: timings
are only meaningful as ratios on a quiet machine.
"""

from __future__ import annotations

import gzip
import json
import mmap
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers.data import write_jsonl

from benchmarks import (
    allocator,
    budget,
    choose_k,
    eval_smoke,
    findings,
    inference,
    lora_update,
    memory,
    routing,
    serve,
    signature_precision,
)
from benchmarks import speed as speed_script
from benchmarks.bench import ROOT, protocol, results, runs, tables, workers
from benchmarks.bench.measure import (
    cpu_description,
    cpu_seconds,
    machine,
    minor_faults,
    peak_rss_mb,
    rss_mb,
)
from lastlayer.config import ModelConfig, load_recipe

MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"
SCRIPTS = [allocator, budget, choose_k, eval_smoke, findings, inference, memory, routing,
           serve, signature_precision, speed_script]


@pytest.fixture(scope="module")
def speed():
    return speed_script


# ---------------------------------------------------------------------------- the package


def test_every_script_runs_as_a_module_and_has_help(capsys):
    for script in SCRIPTS:
        with pytest.raises(SystemExit) as exit_:
            script.main(["--help"])
        assert exit_.value.code == 0, script.__name__
        assert "usage:" in capsys.readouterr().out, script.__name__


def test_no_script_edits_sys_path_and_only_bench_models_loads_models():
    """One place to change when lastlayer's model loading changes: bench/models.py."""
    loading = re.compile(r"^\s*from lastlayer\.core\.(adapters import|encoder import .*"
                         r"\b(load_encoder|resolve_model)\b)", re.MULTILINE)
    files = sorted(f for f in (ROOT / "benchmarks").rglob("*.py")
                   if not any(part.startswith(".venv") for part in f.parts))  # peers' venvs
    assert len(files) > len(SCRIPTS)
    for file in files:
        text = file.read_text(encoding="utf-8")
        assert "sys.path" not in text, file
        if file.name != "models.py":
            assert not re.search(r"encoder\.model\s*=(?!=)", text), file
            assert not loading.search(text), file


def test_markdown_tables_align_and_leave_empty_cells_thin():
    table = tables.markdown(["a", "b", "c"], [["x", "", 1], ["y", 2.5, None]], align="lr")
    assert table.splitlines() == ["| a | b | c |", "|---|---:|---|", "| x | | 1 |",
                                  "| y | 2.5 | None |"]
    assert tables.fmt(None) == "—" and tables.fmt(1.23456, ".2f") == "1.23"
    assert tables.times(None) == "—" and tables.times(2) == "2.00x"
    assert tables.markdown(["only"], []) == "| only |\n|---|"


def test_result_files_round_trip_and_write_whole(tmp_path):
    rows = tmp_path / "deep" / "rows.jsonl"
    assert results.read_rows(rows) == []
    results.append_row(rows, {"key": "a"})
    results.append_row(rows, {"key": "b", "x": [1, 2]})
    assert results.read_rows(rows) == [{"key": "a"}, {"key": "b", "x": [1, 2]}]
    doc = tmp_path / "other" / "doc.json"
    assert results.read_json(doc, {}) == {}
    results.write_json(doc, {"a": [1]}, indent=2)
    assert doc.read_text() == json.dumps({"a": [1]}, indent=2) + "\n"
    assert results.read_json(doc) == {"a": [1]}
    assert [p.name for p in doc.parent.iterdir()] == ["doc.json"]  # no temporary file left


def test_measuring_memory_cpu_and_the_machine():
    assert rss_mb() > 0 and peak_rss_mb() >= rss_mb()
    before = cpu_seconds()
    total = sum(i * i for i in range(300_000))  # burn a little CPU
    assert total > 0 and cpu_seconds() > before
    assert cpu_seconds(os.getppid()) >= 0  # another process's, from /proc
    faults, fresh = minor_faults(), mmap.mmap(-1, 16 * 2**20)  # fresh pages, never touched
    fresh.write(b"x" * len(fresh))  # every page faulted in
    assert minor_faults() - faults > 1000
    assert minor_faults(os.getppid()) > 0 and minor_faults(2**22 + 7) == 0  # none such
    assert cpu_description() in machine("9.9") and machine("9.9").endswith("torch 9.9")


def test_workers_run_as_modules_never_by_file_path():
    command = workers.worker_command("speed", {"a": 1})
    assert command[1:4] == ["-m", "benchmarks.speed", "--worker"]
    assert json.loads(command[4]) == {"a": 1}
    assert not any(part.endswith(".py") for part in command)


def test_a_worker_answers_from_a_fresh_process_or_becomes_an_error(saved_models):
    folder = str(saved_models["bert"])  # not GGUF: speed's worker hands the folder back
    assert workers.run_worker({"copy": folder}, timeout_s=300) == {"model": folder}
    failed = workers.run_worker({}, timeout_s=300, script="no_such_benchmark")
    assert failed["error"].startswith("worker exited with 1") and "no_such_benchmark" in \
        failed["error"]


def test_resumable_plans_skip_what_is_done_and_open_each_group_once(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    items = [("g1", 1), ("g1", 2), ("g2", 3), ("g1", 4)]
    opened = []

    def run_all(max_minutes=None):
        return runs.execute(items, out, key=lambda i: str(i[1]), group=lambda i: i[0],
                            open_group=lambda g: opened.append(g) or g,
                            train=lambda g, i: {"key": str(i[1]), "group": g},
                            say=lambda n, i, row: f"done {n}", max_minutes=max_minutes)

    results.append_row(out, {"key": "2"})  # finished by an earlier call
    assert run_all() == 3
    assert opened == ["g1", "g2", "g1"]  # consecutive runs share their group
    assert [r["key"] for r in results.read_rows(out)] == ["2", "1", "3", "4"]
    assert run_all() == 0 and opened == ["g1", "g2", "g1"]  # nothing left: nothing opened
    assert "done 3" in capsys.readouterr().out
    out.unlink()
    assert run_all(max_minutes=-1) == 0 and "minute limit" in capsys.readouterr().out


def test_a_shared_base_is_never_trained(saved_models):
    from benchmarks.bench.models import SharedBase

    shared = SharedBase(ModelConfig(name_or_path=str(saved_models["bert"])))
    base = shared.model
    weights = {n: p.clone() for n, p in base.named_parameters()}
    with shared.trainable() as encoder:
        assert encoder is not shared.encoder and encoder.model is not base
        assert (encoder.pooling, encoder.max_length) == (shared.encoder.pooling,
                                                         shared.encoder.max_length)
        for p in encoder.model.parameters():
            p.data.add_(1.0)  # what training would do to the copy
        encoder.model = None  # attaching an adapter replaces the copy's model
    assert shared.encoder.model is base
    assert all((p == weights[n]).all() for n, p in base.named_parameters())
    with pytest.raises(RuntimeError), shared.trainable():
        raise RuntimeError("a failed run")
    assert shared.encoder.model is base  # untouched even when a run fails


# ---------------------------------------------------------------------------- speed.py


def _spec(speed, folder: Path, system: str, mode: str, evaluate: bool = False) -> dict:
    args = speed.parse_args(["--model", str(folder), "--data", str(MEDICAL), "--steps", "1",
                             "--warmup", "1", "--batch-size", "4", "--max-length", "32",
                             "--eval-docs", "30"])
    spec = next(s for s in speed.specs_for(args) if (s["system"], s["mode"]) == (system, mode))
    return {**spec, "eval": evaluate}


@pytest.mark.parametrize("top_k", [2, 3])
def test_plan_covers_every_system(speed, top_k):
    full, quick = speed.plan(quick=False, top_k=top_k), speed.plan(quick=True, top_k=top_k)
    for plan in (full, quick):
        assert len(set(plan)) == len(plan), "a mode measured twice"
        assert {system for system, _ in plan} == {speed.ST, speed.LL}
        assert plan[0][0] == speed.ST  # the baseline leads every interleaved round
        assert (speed.ST, "full") in plan  # the reference every ratio is taken against
        for system, mode in plan:  # lastlayer's modes say which blocks they train
            assert (f"-top{top_k}" in mode) is (system == speed.LL)
    # --quick keeps the full run's order, with the baseline, lastlayer's plain mode and one
    # cached mode: the comparisons quoted in the README
    assert quick == [pair for pair in full if pair in quick]
    assert (speed.LL, f"lora-top{top_k}") in quick
    assert any(mode.startswith(f"lora-top{top_k}-cached") for _, mode in quick)
    # every lastlayer mode trains the same adapter under different settings; the plain
    # mode comes first, so the others read as "the same, plus ..."
    modes = [mode for system, mode in full if system == speed.LL]
    assert modes[0] == f"lora-top{top_k}"
    assert all(m.startswith(("lora-top", "full-top")) for m in modes)
    # every "-nodrop" mode has its with-dropout twin in the same run
    assert all(m.removesuffix("-nodrop") in {m for _, m in full} for _, m in full)
    baselines = [pair for pair in full if pair[0] == speed.ST]  # they train every block
    assert baselines == [pair for pair in speed.plan(quick=False, top_k=1) if pair[0] == speed.ST]


def test_several_precisions_run_every_system_in_each_against_the_fastest_baseline(speed):
    args = speed.parse_args(["--quick", "--precision", "fp32", "bf16"])
    specs = speed.specs_for(args)
    plan = speed.plan(quick=True)
    assert [(s["precision"], s["system"], s["mode"]) for s in specs] == \
        [(p, system, mode) for p in ("fp32", "bf16") for system, mode in plan]
    rows = []
    for spec, step in zip(specs, (2.0, 1.0, 0.5, 1.0, 0.5, 0.25), strict=True):
        run = {"step_times_s": [step] * 3, "peak_rss_mb": 100.0, "trainable_params": 1,
               "total_params": 2, "losses": [1.0], "threads": 2, "device": "cpu"}
        rows.append(speed.make_row({**spec, "warmup": 1}, [run], "test machine"))
    lines = speed.format_table(rows).splitlines()[2:]
    # ST in bf16 (1.0 s) is the faster baseline: every ratio is taken against it
    assert "| bf16 |" in lines[3] and "| 1.00x |" in lines[3]
    assert "| fp32 |" in lines[0] and "| 0.50x |" in lines[0]
    assert "| 4.00x |" in lines[5]


def test_measure_every_mode_on_a_tiny_model(speed, saved_models):
    folder = saved_models["bert"]
    rows = []
    for system, mode in speed.plan(quick=False):
        spec = _spec(speed, folder, system, mode, evaluate=mode in ("full", "lora-top2"))
        measured = speed.measure(spec)
        assert len(measured["step_times_s"]) == 2  # 1 warm-up + 1 timed step
        assert all(t > 0 for t in measured["step_times_s"])
        assert measured["trainable_params"] > 0
        if "cached" in mode:
            assert measured["cache_s"] > 0 and measured["cache_pairs"] == 8
            assert 0 < measured["cache_mb"] and measured["cache_peak_rss_mb"] > 0
        rows.append(speed.make_row(spec, [measured], "test machine"))

    by_mode = {r["mode"]: r for r in rows}
    for row in rows:
        assert set(speed.REQUIRED_KEYS) <= set(row)
        assert row["system"] in ("sentence-transformers", "lastlayer")
        assert row["model"] == str(folder)
        assert row["step_s_median"] > 0 and row["pairs_per_s"] > 0
        assert row["peak_rss_mb"] > 0
        assert row["machine"] == "test machine"
    for mode in ("full", "lora-top2"):
        assert 0.0 <= by_mode[mode]["knn_accuracy"] <= 1.0
    assert by_mode["lora-all"]["knn_accuracy"] is None
    # LoRA on every block trains more weights than LoRA on the top 2 of 4.
    assert by_mode["lora-all"]["trainable_params"] > by_mode["lora-top2"]["trainable_params"]
    cached = by_mode["lora-top2-cached"]
    assert cached["step_s_amortised"] > cached["step_s_median"]
    assert cached["cache_peak_rss_mb"] <= cached["peak_rss_mb"]
    json.dumps(rows)  # the rows are what --out writes
    table = speed.format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "lora-top2-cached" in table
    assert "| 1.00x |" in table  # ST full against itself


def test_profile_counts_saved_activations_and_dropout_off_saves_less(speed, saved_models):
    saved = {}
    for system, mode in (("lastlayer", "lora-top2-cached-grouped"),
                         ("lastlayer", "lora-top2-cached-grouped-nodrop")):
        spec = {**_spec(speed, saved_models["bert"], system, mode), "profile": True}
        measured = speed.measure(spec)
        assert "aten::" in measured["profile_table"]
        assert "MB" in measured["saved_activations_table"]
        saved[mode] = measured["saved_activations_mb"]
    # tiny BERT has dropout 0.1: with it off, no attention maps are kept for the backward
    assert 0 < saved["lora-top2-cached-grouped-nodrop"] < saved["lora-top2-cached-grouped"]


def test_failed_worker_becomes_an_error_row(speed):
    spec = {"system": "lastlayer", "mode": "lora-top2", "model": "m", "batch_size": 4,
            "max_length": 32, "steps": 1, "warmup": 1, "lr": 1e-4}
    row = speed.make_row(spec, [{"error": "boom"}], "m")
    assert row["step_s_median"] is None and row["errors"] == ["boom"]
    assert set(speed.REQUIRED_KEYS) <= set(row)


# ---------------------------------------------------------------------------- memory.py


def test_memory_modes_are_all_measurable_against_full():
    assert len(set(memory.MODES)) == len(memory.MODES)
    assert "full" in memory.MODES  # the reference of the "vs full" column
    for mode in memory.MODES:  # a quantized mode says its bits last; the rest load plain
        bits = memory._quantization(mode)
        assert bits is None or mode.endswith(bits)
        assert mode == "full" or mode.startswith("lora-")
    assert {memory._quantization(m) for m in memory.MODES} == {None, "8bit", "4bit"}
    assert memory._quantization("lora-top2") is None
    assert set(memory.PRESETS) >= {"bert-large", "llama-0.5b"}  # the defaults of --models


def test_memory_table_lists_failed_modes_last_with_their_error():
    ok = {"model": "m", "mode": "full", "peak_mb": 200.0, "total_params": 2e6,
          "trainable_params": 2_000_000, "loaded_mb": 50.0, "step_s_median": 0.5}
    lora = dict(ok, mode="lora-top2", peak_mb=50.0, trainable_params=1000)
    failed = {"model": "m", "mode": "lora-all",
              "error": "worker exited with 1: Traceback\n  ...\ntorch.OutOfMemoryError: CUDA | x"}
    lines = memory.format_table([ok, failed, lora]).splitlines()
    assert "| lora-top2 | 1,000 | 50 | 0.25x |" in lines[3]
    assert lines[4].startswith("| m | | lora-all | failed: torch.OutOfMemoryError: CUDA / x")


# ---------------------------------------------------------------------------- findings.py


@pytest.fixture
def tiny_protocol(monkeypatch, saved_models, tmp_path):
    """The findings' protocol pointed at a tiny Llama, a small labelled file and a BEIR folder."""
    monkeypatch.setattr(protocol, "MODELS", {"tiny": protocol.ModelSpec(
        str(saved_models["llama"]), 4, 32, 2, {"full": 1e-3, "lora": 1e-3}, "full")})
    root = tmp_path / "data"
    records = [json.loads(line) for line in gzip.open(MEDICAL, "rt", encoding="utf-8")][:80]
    (root / "medical").mkdir(parents=True)
    write_jsonl(root / "medical" / "m.jsonl", records)
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": r["text"]}
                                        for i, r in enumerate(records[:40])])
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": records[i]["text"][:80]}
                                         for i in range(5)])
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(5)))
    monkeypatch.setattr(protocol, "DATASETS", {"medical": "medical/m.jsonl", "beir": "beir"})
    monkeypatch.setattr(protocol, "EVAL_DOCS", 30)
    return root


def test_findings_runs_resumes_and_reports(tiny_protocol, tmp_path):
    root = tiny_protocol
    plan = [findings.Run("tiny", d, o, "full", k, 1e-3, 42, cached, steps=2, batch_size=4)
            for d, o, k, cached in [("medical", "crop", 2, True), ("medical", "dropout", 2, True),
                                    ("medical", "crop", 1, True), ("medical", "crop", 4, False),
                                    ("beir", "crop", 2, True)]]
    out, work = tmp_path / "rows.jsonl", tmp_path / "work"
    assert findings.execute(plan, out, root, work) == 5
    rows = results.read_rows(out)
    assert [r["key"] for r in rows] == [r.key for r in plan]
    medical = rows[0]
    assert medical["metric"] == "knn_accuracy" and medical["eval_documents"] == 30
    assert medical["delta"] == pytest.approx(medical["value"] - medical["base_value"])
    assert medical["ci95_low"] <= medical["delta"] <= medical["ci95_high"]
    assert rows[3]["k_label"] == "all" and rows[3]["cache_s"] < 1  # no cache: fresh views
    assert rows[4]["metric"] == "ndcg@10" and rows[4]["eval_documents"] == 30 + 5
    assert all(0 <= r["value"] <= 1 and r["final_loss"] > 0 for r in rows)
    assert len({r["base_value"] for r in rows[:4]}) == 1  # the base measured once per group
    # Everything is kept: a second call runs nothing and rebuilds no cache.
    kept = {p: p.stat().st_mtime_ns for p in work.rglob("*.pt")}
    assert findings.execute(plan, out, root, work) == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*.pt")} == kept
    # one base file per group, one pair cache per (data set, objective, seed) used cached
    assert len([p for p in kept if p.name == "base.pt"]) == 2
    assert len([p for p in kept if p.name != "base.pt"]) == len(
        {(r.dataset, r.objective, r.seed) for r in plan if r.cached})
    # Every labelled run keeps its artifact, with the recipe that reproduces it.
    saved = work / "tiny" / "medical" / "adapters"
    assert {p.name for p in saved.iterdir()} == {
        findings.artifact_name(r) for r in plan if r.dataset == "medical"}
    name = findings.artifact_name(plan[0])
    report = json.loads((saved / name / "eval.json").read_text())
    assert report["adapted"]["knn_accuracy"] == medical["value"]
    assert report["delta"]["ci95_low"] == medical["ci95_low"]
    recipe = load_recipe(saved / name / "recipe.yaml")
    assert recipe.train.cached_pairs == 8 and recipe.eval.max_docs == 30
    assert recipe.output_dir == f"adapters/medical/{name}"
    assert rows[2]["k"] == 1 and rows[2]["cached"]  # served by the seed's k=2 cache
    headline, topk = findings.headline_table(rows), findings.topk_table(rows, "tiny", "medical")
    assert "| tiny (full top-2) | medical | knn_accuracy |" in headline
    assert "| all |" in topk and "% of all)" in topk
    assert "| tiny | beir | ndcg@10 |" in findings.best_table(rows)
    # Shipping copies the artifact and writes a recipe that says what it measured.
    artifact, recipe_file = findings.ship(saved / name, root=tmp_path / "repo")
    assert (artifact / "adapter_model.safetensors").exists()
    assert recipe_file == tmp_path / "repo" / "recipes" / "medical" / f"{name}.yaml"
    assert load_recipe(recipe_file) == recipe
    header = recipe_file.read_text().splitlines()[:3]
    assert "python -m benchmarks.findings" in header[1] and "lastlayer train" in header[2]
    assert "docs/results.md" in header[1] and f"{medical['delta']:+.3f}" not in header[1]


def test_findings_ships_recipes_naming_the_hub_copy_of_unshipped_data():
    hub, note = findings._hub_source("../elsewhere/reuters_r8/r8.jsonl.gz")
    assert hub == "hf://yangwang825/reuters-21578?split=train+test" and "--data-root" in note
    assert findings._hub_source("data/medical_abstracts/medical_abstracts.jsonl.gz") == (None, "")
    assert set(findings.HUB_SOURCES) == set(protocol.DATASETS) - set(findings.SHIPPED) - {
        "scifact"}
    for dataset, (hub, note) in findings.HUB_SOURCES.items():  # the shipped recipes say the same
        domain = findings.DOMAINS[dataset]
        for recipe in (ROOT / "recipes" / domain).glob("*.yaml"):
            text = recipe.read_text()
            assert f"data:\n  train: {hub}\n" in text, recipe
            assert " ".join(line[2:] for line in text.splitlines() if line.startswith("# ")) \
                .count(note) == 1, recipe


def test_shipping_a_run_on_a_local_copy_records_the_hub_copy(tmp_path):
    """A run kept with the local path of its data (as the benchmark trains) ships naming
    the Hub copy, exactly as the shipped news artifact does: lastlayer.json, recipe.yaml
    and the card; eval.json still names the copy it was measured on."""
    from lastlayer import artifact

    shipped = ROOT / "adapters" / "news" / "smollm2-135m_lora-top4_crop"
    local = "../elsewhere/reuters_r8/r8.jsonl.gz"
    kept = shutil.copytree(shipped, tmp_path / "kept")
    hub = findings.HUB_SOURCES["reuters_r8"][0]
    for name in ("lastlayer.json", "recipe.yaml"):
        (kept / name).write_text((kept / name).read_text().replace(hub, local))
    assert hub not in (kept / "lastlayer.json").read_text()
    out, _ = findings.ship(kept, root=tmp_path / "repo")
    assert artifact.read(out) == artifact.read(shipped)  # training.data: the Hub id
    assert load_recipe(out / "recipe.yaml") == load_recipe(shipped / "recipe.yaml")
    for name in ("README.md", "eval.json"):
        assert (out / name).read_text() == (shipped / name).read_text(), name


def test_findings_plan_answers_the_three_questions_first():
    plan = findings.plan()
    assert len({r.key for r in plan}) == len(plan)  # every planned run is unique
    first = plan[: 2 * len(protocol.DATASETS)]  # raw base, seed 42: crop vs dropout everywhere
    assert {(r.model, r.dataset, r.objective) for r in first} == {
        ("smollm2", d, o) for d in protocol.DATASETS for o in ("crop", "dropout")}
    for run in plan:  # cached runs fit under their model's cache
        assert not run.cached or run.k <= protocol.MODELS[run.model].cache_k
    seeds = {(r.model, r.seed) for r in plan if r.kind == "full" and r.k == 4}
    assert {("smollm2", 42), ("smollm2", 43)} <= seeds
    # crop vs dropout is a fair comparison: every dropout run has a crop twin with the same
    # model, data, adapter, lr, seed, views (cached or not) and budget
    keys = {(r.model, r.dataset, r.kind, r.k, r.lr, r.seed, r.cached, r.steps, r.batch_size,
             r.objective) for r in plan}
    for run in plan:
        if run.objective == "dropout":
            twin = (run.model, run.dataset, run.kind, run.k, run.lr, run.seed, run.cached,
                    run.steps, run.batch_size, "crop")
            assert twin in keys, run
    # every headline comparison (model default kind, cached, every data set, both
    # objectives) is measured at every seed, so the spread is known; so each (model, data
    # set) in the plan has the headline row its tables start from
    for name, spec in protocol.MODELS.items():
        headline = [r for r in plan if r.model == name and r.kind == spec.kind
                    and r.k == spec.cache_k and r.cached]
        by_cell: dict[tuple, set[int]] = {}
        for r in headline:
            by_cell.setdefault((r.dataset, r.objective), set()).add(r.seed)
        assert by_cell and all(seeds == set(protocol.SEEDS) for seeds in by_cell.values()), name
    assert {(r.model, r.dataset) for r in plan} == {
        (r.model, r.dataset) for r in plan if r == findings.run_for(r.model, r.dataset, "crop")}
    # the top-k question: on the raw base, both kinds are swept over several k and all layers
    for kind in ("full", "lora"):
        ks = {r.k for r in plan if (r.model, r.dataset, r.kind, r.objective, r.seed) ==
              ("smollm2", "medical_abstracts", kind, "crop", 42)}
        assert len(ks) >= 4 and protocol.MODELS["smollm2"].num_layers in ks, kind


def test_inference_counts_private_bytes_and_judges_ratios():
    import copy

    import torch
    from helpers.tiny import tiny_model

    base = tiny_model("bert", num_layers=2)
    block = base.encoder.layer[1]
    private = copy.deepcopy(block)
    own = sum(p.numel() * p.element_size() for p in private.parameters())
    assert inference.private_bytes(private, base) == own
    assert inference.private_bytes(block, base) == 0  # the base's own block costs nothing
    mixed = torch.nn.ModuleList([block, private])  # a head sharing half its weights
    assert inference.private_bytes(mixed, base) == own
    ratios = inference._ratios({"all4": 2.0, "peft-separate": 6.0, "mixed": 1.0,
                                "single": 0.8, "peft-mixed": 1.2})
    assert ratios["all4_vs_peft_separate"] == {"ratio": 3.0, "target": 2.5, "met": True}
    assert ratios["mixed_vs_single"]["met"] is False  # 0.8 / 1.0 < 0.9
    assert ratios["mixed_vs_peft_mixed"]["met"] is True
    assert "mixed_vs_st_grouped" not in ratios  # no sentence-transformers run


# ---------------------------------------------------------------------------- choose_k.py


def test_choose_k_probe_auto_and_report_on_a_tiny_model(tiny_protocol, tmp_path, monkeypatch,
                                                        capsys):
    """benchmarks.choose_k: the labelled probe's k and the label-free k per data set,
    resumable, exported for other scripts, and the agreement table."""
    root = tiny_protocol
    monkeypatch.setattr(choose_k, "MODEL", "tiny")
    monkeypatch.setattr(choose_k, "DATASETS", ["medical", "beir"])
    monkeypatch.setattr(findings, "DEFAULT_OUT", tmp_path / "no-findings.jsonl")
    out, exported = tmp_path / "choose_k.json", tmp_path / "shared"
    common = ["--out", str(out), "--data-root", str(root), "--export-dir", str(exported)]
    choose_k.main(["probe", *common])
    choose_k.main(["auto", *common, "--docs", "12"])
    found = json.loads(out.read_text())
    probe = json.loads((exported / "probe_k.json").read_text())
    assert set(probe) == set(found) == {"medical", "beir"}
    layers = protocol.MODELS["tiny"].num_layers
    assert len(found["medical"]["probe"]["curve"]) == layers + 1  # the embeddings, then each block
    assert found["medical"]["probe"]["n_docs"] == 30
    assert found["beir"]["probe"]["n_docs"] == 5 and "ndcg" in found["beir"]["probe"][
        "measure"]
    auto = found["medical"]["auto"]
    assert auto["n_docs"] == 12 and auto["n_queries"] == 24 and auto["signal"] == "crops"
    from lastlayer.evaluation.probe import recommend_top_k
    assert (auto["k"], auto["p"]) == recommend_top_k(auto["curve"], 24)
    assert auto["curve"] == auto["candidates"]["inbatch"]["curve"]
    # The held-out documents never reach the signal: it sees the training documents only.
    assert auto["train_docs"] == 80 - 30
    before = out.read_text()
    choose_k.main(["probe", *common])  # resumable: nothing is measured twice
    assert out.read_text() == before
    # The same signal in float32 and under bf16 autocast, one run, one set of crops.
    choose_k.main(["precision", *common, "--docs", "12"])
    both = json.loads(out.read_text())["medical"]["precision"]
    assert both["fp32"]["curve"] == pytest.approx(auto["curve"], abs=1e-12)
    assert len(both["bf16"]["curve"]) == layers + 1 and both["n_docs"] == 12
    assert both["same_k"] is (both["fp32"]["k"] == both["bf16"]["k"])
    assert both["max_abs_curve_diff"] == pytest.approx(max(
        abs(a - b) for a, b in zip(both["fp32"]["curve"], both["bf16"]["curve"], strict=True)),
        abs=1e-4)
    choose_k.main(["report", *common])
    assert "bf16 autocast k (p)" in capsys.readouterr().out


# ---------------------------------------------------------------------------- budget.py


def test_budget_plan_takes_the_auto_k_and_runs_the_cheap_points_first(tmp_path):
    """benchmarks.budget: the k of each corpus is the one ``top_k: auto`` chose (the
    choose_k.json format), every corpus gets its 40-step point before any 150-step one, one
    epoch is added only where it is not already about a budget, and no run is planned twice."""
    k_file = tmp_path / "choose_k.json"
    k_file.write_text(json.dumps({
        "ohsumed23": {"probe": {"k": 4}, "auto": {"k": 3}},  # the auto k wins
        "reuters_r8": {"probe": {"k": 30}, "auto": {"k": 30}},
        "scifact": 30,  # a plain {name: k} file works too
    }))
    ks = budget.read_ks(k_file)
    assert ks == {**budget.KNOWN_K, "ohsumed23": 3, "reuters_r8": 30, "scifact": 30}
    epochs = {"medical_abstracts": 57, "ohsumed23": 200, "reuters_r8": 208, "scifact": 162}
    plan = budget.plan(ks, epochs)
    assert len({r.key for _, r in plan}) == len(plan)  # every planned run is unique
    assert all(r.k == ks[r.dataset] for _, r in plan)  # each corpus at its chosen k
    groups = [g for g, _ in plan]
    assert groups == sorted(groups)  # priority order kept
    # every corpus with a k has its seed-42 point at every budget over the full pairs, the
    # cheaper ones first
    first = {}
    for i, (_, r) in enumerate(plan):
        if r.seed == 42 and r.pairs == budget.PAIRS:
            first.setdefault((r.dataset, r.steps), i)
    for dataset in ks:
        at = [first[(dataset, steps)] for steps in budget.BUDGETS]
        assert at == sorted(at), dataset
    # the first corpus (the demo's) is answered first; then every other corpus gets its
    # 40-step point before any of them gets a longer one
    others = [(r.steps, i) for i, (_, r) in enumerate(plan)
              if r.dataset != budget.CORPORA[0] and r.seed == 42 and r.steps in budget.BUDGETS]
    assert max(i for steps, i in others if steps == 40) < min(i for steps, i in others
                                                               if steps > 40)
    assert all(r.dataset == budget.CORPORA[0] for g, r in plan if g == groups[0])
    # second seeds of the cheap points, for the spread
    assert {(r.dataset, r.steps) for _, r in plan if r.seed == 43 and r.steps < 500} >= {
        (d, s) for d in ks for s in budget.BUDGETS[:2]}
    # one epoch only where it is not within 15 % of a budget (scifact's 162 ~ 150 is not run)
    for dataset, steps in epochs.items():
        near = any(abs(steps - b) <= 0.15 * b for b in budget.BUDGETS)
        assert any(r.dataset == dataset and r.steps == steps for _, r in plan) is not near
    # the demo's budget: fewer pairs, on medical, at both seeds
    assert {(r.dataset, r.seed) for _, r in plan if r.pairs < budget.PAIRS} == {
        ("medical_abstracts", 42), ("medical_abstracts", 43)}
    assert not budget.plan({}, epochs)  # no k known: nothing to run


def test_lora_update_times_four_equal_ways_and_writes_them(tmp_path):
    """Every way gives the same output (the script checks), and each row has all four."""
    out = tmp_path / "lora_update.json"
    assert lora_update.main(["--rows", "4", "--adapters", "2", "3", "--tokens", "8",
                             "--dim", "16", "--rank", "2", "--repeats", "2",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["precision"], r["adapters"]) for r in result["rows"]] == [
        ("bf16", 2), ("bf16", 3), ("fp32", 2), ("fp32", 3)]
    for row in result["rows"]:
        assert set(row["ms"]) == {"base", "bmm", "stacked", "segments"}
        assert all(ms > 0 for ms in row["ms"].values())


@pytest.mark.slow
def test_allocator_times_both_heap_settings_in_their_own_processes(tmp_path):
    """Two workers per batch size (glibc's defaults, freed memory kept), each answering
    every round, the kept one really applied, and the same vectors from both."""
    out = tmp_path / "allocator.json"
    assert allocator.main(["--models", "minilm", "--texts", "6", "--batch-sizes", "2", "6",
                           "--rounds", "2", "--pause", "0", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [2, 6]
    for row in rows:
        assert row["applied"] is True and row["vectors_identical"] is True
        for setting in allocator.SETTINGS:
            assert len(row[setting]["seconds"]) == 2 and row[setting]["faults_per_call"] >= 0
        assert row["speedup_median"] > 0


@pytest.mark.slow
def test_inference_profile_names_where_an_encode_spends_its_time(tmp_path):
    out = tmp_path / "profile.json"
    result = inference.main(["--profile", "--models", "minilm", "--texts", "4",
                             "--batch-size", "4", "--out", str(out)])
    profile = result["models"]["minilm"]
    assert profile["texts"] == 4 and 0 < profile["tokenize_s"] < profile["encode_s"]
    ops = {o["op"] for o in profile["ops"]}
    assert "aten::addmm" in ops and 0 < sum(o["share"] for o in profile["ops"]) <= 1.0001
    assert json.loads(out.read_text())["heap"] in ("kept", "glibc defaults")
