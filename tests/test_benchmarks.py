"""Smoke test of benchmarks/speed.py: every system/mode on a tiny model, 2 steps, row schema.

No timing assertions: timings are only meaningful as ratios on a quiet machine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"


def _load(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))  # memory.py imports speed.py as a sibling script
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return _load("speed")


def _spec(speed, folder: Path, system: str, mode: str, evaluate: bool) -> dict:
    args = speed.parse_args(["--model", str(folder), "--data", str(MEDICAL), "--steps", "1",
                             "--warmup", "1", "--batch-size", "4", "--max-length", "32",
                             "--eval-docs", "30"])
    spec = next(s for s in speed.specs_for(args) if (s["system"], s["mode"]) == (system, mode))
    return {**spec, "eval": evaluate}


def test_plan_covers_every_system(speed):
    assert speed.plan(quick=True) == [
        ("sentence-transformers", "full"), ("lastlayer", "lora-top2"),
        ("lastlayer", "lora-top2-cached")]
    assert {m for _, m in speed.plan(quick=False)} == {
        "full", "lora-all", "lora-top2", "full-top2", "lora-top2-cached"}


def test_measure_every_mode_on_a_tiny_model(speed, saved_models):
    folder = saved_models["bert"]
    rows = []
    for system, mode in speed.plan(quick=False):
        spec = _spec(speed, folder, system, mode, evaluate=mode in ("full", "lora-top2"))
        measured = speed.measure(spec)
        assert len(measured["step_times_s"]) == 2  # 1 warm-up + 1 timed step
        assert all(t > 0 for t in measured["step_times_s"])
        assert measured["trainable_params"] > 0
        if mode.endswith("cached"):
            assert measured["cache_s"] > 0 and measured["cache_pairs"] == 8
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
    json.dumps(rows)  # the rows are what --out writes
    table = speed.format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "lora-top2-cached" in table


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
