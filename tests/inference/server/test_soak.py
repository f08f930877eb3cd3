"""A short soak in CI: ``benchmarks/soak.py``'s driver against a real ``lastlayer serve``
subprocess on loopback (tiny model), 8 then 32 clients, base and two different adapters, float and
base64, about 10 % malformed bodies: no wrong answer, no 5xx, no dropped connection, a clean
exit. (The long run, >= 5,000 requests: ``python -m benchmarks.soak``.)"""

from __future__ import annotations

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from helpers.artifacts import MAX_LENGTH, make_artifact  # noqa: E402

from benchmarks.soak import soak  # noqa: E402

pytestmark = pytest.mark.serve


def test_short_soak_loses_nothing(saved_models, tmp_path):
    model = saved_models["bert"]
    adapter = make_artifact(model, tmp_path / "med", "lora", 2, 1, "bert")
    result = soak(str(model), adapter, phases=[(8, 150), (32, 150)], warmup=60,
                  pool_size=80, max_seconds=240, max_length=MAX_LENGTH, work=tmp_path / "w")
    totals = result["totals"]
    assert totals["sent"] == 300 and 10 <= totals["malformed"] <= 60, totals
    assert totals["wrong"] == totals["server_errors"] == totals["dropped"] == 0, \
        [p["problems"] for p in result["phases"]]
    assert all(phase["complete"] for phase in result["phases"])
    assert result["server_exit_code"] == 0
    assert result["rss_mb"]["end"] > 0 and result["phases"][-1]["p99_ms"] > 0


def test_the_soaks_second_adapter_is_another_adapter(saved_models, tmp_path):
    """``med2`` is not ``med`` under a second name: its vectors differ from both others'."""
    import numpy as np
    from helpers.data import TEXTS

    from benchmarks.soak import mirrored_adapter
    from lastlayer.inference import Embedder

    model = saved_models["bert"]
    med = make_artifact(model, tmp_path / "med", "lora", 2, 1, "bert")
    embedder = Embedder(model, device="cpu", max_length=MAX_LENGTH)
    embedder.load(med, "med")
    embedder.load(mirrored_adapter(med, tmp_path / "med2"), "med2")
    vectors = {head: embedder.encode(TEXTS, adapter=head).vectors
               for head in (None, "med", "med2")}
    for a, b in (("med", "med2"), (None, "med2")):
        assert np.abs(vectors[a] - vectors[b]).max() > 1e-3, (a, b)
