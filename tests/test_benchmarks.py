"""Smoke test of benchmarks/speed.py: every system/mode on a tiny model, 2 steps, row schema.

No timing assertions: timings are only meaningful as ratios on a quiet machine.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl

from lastlayer.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"


def _load(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))  # memory.py imports speed.py as a sibling script
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return _load("speed")


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
    baselines = [pair for pair in full if pair[0] == speed.ST]  # they train every block
    assert baselines == [pair for pair in speed.plan(quick=False, top_k=1) if pair[0] == speed.ST]


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


def test_memory_script_imports_and_lists_its_modes():
    memory = _load("memory")
    assert memory.MODES[0] == "full" and "lora-top2-4bit" in memory.MODES
    assert memory._quantization("lora-top2-8bit") == "8bit"
    assert memory._quantization("lora-top2") is None


def test_memory_table_lists_failed_modes_last_with_their_error():
    memory = _load("memory")
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
def findings(monkeypatch, saved_models, tmp_path):
    """benchmarks/findings.py pointed at a tiny Llama, a small labelled file and a BEIR folder."""
    module = _load("findings")
    monkeypatch.setattr(module, "MODELS", {"tiny": module.ModelSpec(
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
    monkeypatch.setattr(module, "DATASETS", {"medical": "medical/m.jsonl", "beir": "beir"})
    monkeypatch.setattr(module, "EVAL_DOCS", 30)
    return module, root


def test_findings_runs_resumes_and_reports(findings, tmp_path):
    module, root = findings
    runs = [module.Run("tiny", d, o, "full", k, 1e-3, 42, cached, steps=2, batch_size=4)
            for d, o, k, cached in [("medical", "crop", 2, True), ("medical", "dropout", 2, True),
                                    ("medical", "crop", 1, True), ("medical", "crop", 4, False),
                                    ("beir", "crop", 2, True)]]
    out, work = tmp_path / "rows.jsonl", tmp_path / "work"
    assert module.execute(runs, out, root, work) == 5
    rows = module.read_rows(out)
    assert [r["key"] for r in rows] == [r.key for r in runs]
    medical = rows[0]
    assert medical["metric"] == "knn_accuracy" and medical["eval_documents"] == 30
    assert medical["delta"] == pytest.approx(medical["value"] - medical["base_value"])
    assert medical["ci95_low"] <= medical["delta"] <= medical["ci95_high"]
    assert rows[3]["k_label"] == "all" and rows[3]["cache_s"] < 1  # no cache: fresh views
    assert rows[4]["metric"] == "ndcg@10" and rows[4]["eval_documents"] == 30 + 5
    assert all(0 <= r["value"] <= 1 and r["final_loss"] > 0 for r in rows)
    # Everything is kept: a second call runs nothing, and caches sit under --work.
    assert module.execute(runs, out, root, work) == 0
    assert {p.name for p in (work / "tiny" / "medical").iterdir()} == {
        "base.pt", "pairs-crop-seed42-k2.pt", "pairs-dropout-seed42-k2.pt", "adapters"}
    # Every labelled run keeps its artifact, with the recipe that reproduces it.
    saved = work / "tiny" / "medical" / "adapters"
    assert {p.name for p in saved.iterdir()} == {
        "tiny_full-top2_crop", "tiny_full-top2_dropout", "tiny_full-top1_crop",
        "tiny_full-topall_crop"}
    report = json.loads((saved / "tiny_full-top2_crop" / "eval.json").read_text())
    assert report["adapted"]["knn_accuracy"] == medical["value"]
    assert report["delta"]["ci95_low"] == medical["ci95_low"]
    recipe = load_recipe(saved / "tiny_full-top2_crop" / "recipe.yaml")
    assert recipe.train.cached_pairs == 8 and recipe.eval.max_docs == 30
    assert recipe.output_dir == "adapters/medical/tiny_full-top2_crop"
    assert rows[2]["k"] == 1 and rows[2]["cached"]  # served by the seed's k=2 cache
    headline, topk = module.headline_table(rows), module.topk_table(rows, "tiny", "medical")
    assert "| tiny (full top-2) | medical | knn_accuracy |" in headline
    assert "| all |" in topk and "% of all)" in topk
    assert "| tiny | beir | ndcg@10 |" in module.best_table(rows)
    # Shipping copies the artifact and writes a recipe that says what it measured.
    artifact, recipe_file = module.ship(saved / "tiny_full-top2_crop", root=tmp_path / "repo")
    assert (artifact / "adapter_model.safetensors").exists()
    assert recipe_file == tmp_path / "repo" / "recipes" / "medical" / "tiny_full-top2_crop.yaml"
    assert load_recipe(recipe_file) == recipe
    header = recipe_file.read_text().splitlines()[:3]
    assert f"{medical['delta']:+.3f}" in header[1] and "lastlayer train" in header[2]


def test_findings_ships_recipes_naming_the_hub_copy_of_unshipped_data():
    module = _load("findings")
    hub, note = module._hub_source("../elsewhere/reuters_r8/r8.jsonl.gz")
    assert hub == "hf://yangwang825/reuters-21578?split=train+test" and "--data-root" in note
    assert module._hub_source("data/medical_abstracts/medical_abstracts.jsonl.gz") == (None, "")
    assert set(module.HUB_SOURCES) == set(module.DATASETS) - set(module.SHIPPED) - {"scifact"}
    for dataset, (hub, note) in module.HUB_SOURCES.items():  # the shipped recipes say the same
        domain = module.DOMAINS[dataset]
        for recipe in (module.ROOT / "recipes" / domain).glob("*.yaml"):
            text = recipe.read_text()
            assert f"data:\n  train: {hub}\n" in text, recipe
            assert " ".join(line[2:] for line in text.splitlines() if line.startswith("# ")) \
                .count(note) == 1, recipe


def test_findings_plan_answers_the_three_questions_first():
    module = _load("findings")
    plan = module.plan()
    assert len({r.key for r in plan}) == len(plan)
    first = plan[: 2 * len(module.DATASETS)]  # raw base, seed 42: crop vs dropout everywhere
    assert {(r.model, r.dataset, r.objective) for r in first} == {
        ("smollm2", d, o) for d in module.DATASETS for o in ("crop", "dropout")}
    for run in plan:  # cached runs fit under their model's cache
        assert not run.cached or run.k <= module.MODELS[run.model].cache_k
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
    # objectives) is measured at every seed, so the spread is known
    for name, spec in module.MODELS.items():
        headline = [r for r in plan if r.model == name and r.kind == spec.kind
                    and r.k == spec.cache_k and r.cached]
        by_cell: dict[tuple, set[int]] = {}
        for r in headline:
            by_cell.setdefault((r.dataset, r.objective), set()).add(r.seed)
        assert by_cell and all(seeds == set(module.SEEDS) for seeds in by_cell.values()), name


def test_inference_counts_private_bytes_and_judges_ratios():
    import copy

    import torch
    from tiny import tiny_model

    inference = _load("inference")
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


def test_choose_k_probe_auto_and_report_on_a_tiny_model(findings, tmp_path, monkeypatch):
    """benchmarks/choose_k.py: the labelled probe's k and the label-free k per data set,
    resumable, exported for other scripts, and the agreement table."""
    module, root = findings
    choose = _load("choose_k")
    monkeypatch.setattr(choose, "findings", module)  # the tiny model and data sets
    monkeypatch.setattr(choose, "MODEL", "tiny")
    monkeypatch.setattr(choose, "DATASETS", ["medical", "beir"])
    monkeypatch.setattr(module, "DEFAULT_OUT", tmp_path / "no-findings.jsonl")
    out, exported = tmp_path / "choose_k.json", tmp_path / "shared"
    common = ["--out", str(out), "--data-root", str(root), "--export-dir", str(exported)]
    choose.main(["probe", *common])
    choose.main(["auto", *common, "--docs", "12"])
    results = json.loads(out.read_text())
    probe = json.loads((exported / "probe_k.json").read_text())
    assert set(probe) == set(results) == {"medical", "beir"}
    assert len(results["medical"]["probe"]["curve"]) == 5  # layers 0..4 of tiny Llama
    assert results["medical"]["probe"]["n_docs"] == 30
    assert results["beir"]["probe"]["n_docs"] == 5 and "ndcg" in results["beir"]["probe"][
        "measure"]
    auto = results["medical"]["auto"]
    assert auto["n_docs"] == 12 and auto["n_queries"] == 24 and auto["signal"] == "crops"
    from lastlayer.evaluation.probe import recommend_top_k
    assert (auto["k"], auto["p"]) == recommend_top_k(auto["curve"], 24)
    assert auto["curve"] == auto["candidates"]["inbatch"]["curve"]
    # The held-out documents never reach the signal: it sees the training documents only.
    assert auto["train_docs"] == 80 - 30
    before = out.read_text()
    choose.main(["probe", *common])  # resumable: nothing is measured twice
    assert out.read_text() == before



# ---------------------------------------------------------------------------- budget.py


def test_budget_plan_takes_the_auto_k_and_runs_the_cheap_points_first(tmp_path):
    """benchmarks/budget.py: the k of each corpus is the one ``top_k: auto`` chose (the
    choose_k.json format), every corpus gets its 40-step point before any 150-step one, one
    epoch is added only where it is not already about a budget, and no run is planned twice."""
    budget = _load("budget")
    k_file = tmp_path / "choose_k.json"
    k_file.write_text(json.dumps({
        "ohsumed23": {"probe": {"k": 4}, "auto": {"k": 3}},  # the auto k wins
        "reuters_r8": {"probe": {"k": 30}, "auto": {"k": 30}},
        "scifact": 30,  # a plain {name: k} file works too
    }))
    ks = budget.read_ks(k_file)
    assert ks == {"medical_abstracts": 7, "ohsumed23": 3, "reuters_r8": 30, "scifact": 30}
    epochs = {"medical_abstracts": 57, "ohsumed23": 200, "reuters_r8": 208, "scifact": 162}
    runs = budget.plan(ks, epochs)
    assert len({r.key for _, r in runs}) == len(runs)
    order = [(g, r.dataset, r.steps, r.seed, r.pairs) for g, r in runs]
    assert order[:3] == [("a", "medical_abstracts", 40, 42, 640),
                         ("a", "medical_abstracts", 40, 42, 1280),
                         ("a", "medical_abstracts", 150, 42, 1280)]
    b = [(d, steps) for g, d, steps, _, _ in order if g == "b"]
    assert b == [(d, 40) for d in budget.CORPORA[1:]] + [(d, 150) for d in budget.CORPORA[1:]]
    assert {steps for g, _, steps, seed, _ in order if g == "c"} == {40, 150}
    assert all(seed == 43 for g, _, _, seed, _ in order if g == "c")
    epoch_runs = {(d, steps) for g, d, steps, _, _ in order if g == "d" and steps != 500}
    assert epoch_runs == {("medical_abstracts", 57), ("ohsumed23", 200), ("reuters_r8", 208)}
    assert [g for g, *_ in order] == sorted(g for g, *_ in order)  # priority order kept
