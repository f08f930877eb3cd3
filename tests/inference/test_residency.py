"""Many adapters on one base under ``adapter_memory``: registration without heads, LRU eviction
and byte accounting, the merged / unmerged rule, single-flight loading under threads, an
evicted adapter's exact vectors when it comes back, a broken adapter failing alone."""

from __future__ import annotations

import contextlib
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from helpers.artifacts import MAX_LENGTH, make_artifact
from helpers.data import TEXTS

from lastlayer import artifact
from lastlayer.inference import Embedder
from lastlayer.inference.embedder import AdapterLoadError
from lastlayer.inference.residency import HEAD_OVERHEAD, parse_memory


@pytest.fixture(scope="module")
def arts(saved_models, tmp_path_factory):
    """Four LoRA top-2 adapters (different seeds) and a full top-1 one on the tiny BERT."""
    root = tmp_path_factory.mktemp("many")
    model = saved_models["bert"]
    found = {f"l{i}": make_artifact(model, root / f"l{i}", "lora", 2, i + 1) for i in range(4)}
    found["f"] = make_artifact(model, root / "f", "full", 1, 9)
    return found


def lazy(saved_models, memory, arts=None, names=(), **load) -> Embedder:
    emb = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH,
                   adapter_memory=memory)
    for name in names:
        emb.load(arts[name], name, **load)
    return emb


def test_sizes_parse_in_decimal_and_binary_units():
    assert parse_memory("2GB") == 2 * 10**9 and parse_memory("512MB") == 512 * 10**6
    assert parse_memory("1.5GiB") == int(1.5 * 2**30) and parse_memory(" 300 kb ") == 300_000
    assert parse_memory(4096) == 4096 and parse_memory(None) is None
    for bad in ("lots", "2 parsecs", "-1GB", 0, "", True, 1.5):
        with pytest.raises(ValueError, match="adapter_memory"):
            parse_memory(bad)


def test_registering_builds_no_head(saved_models, arts, monkeypatch):
    emb = lazy(saved_models, "1GB")
    monkeypatch.setattr(emb.engine, "build_head", lambda *a: pytest.fail("built at load"))
    for i in range(30):  # one folder under many names: an index of 30 adapters
        emb.load(arts["l0"], f"a{i}")
    stats = emb.stats()
    assert (stats["registered"], stats["resident"], stats["bytes_used"]) == (30, 0, 0)
    assert len(emb.adapters) == 30 and emb.resident_names() == set()


def test_lru_eviction_order_and_byte_accounting(saved_models, arts):
    probe = lazy(saved_models, "1GB", arts, ["l0"], merge=True)
    probe.encode(TEXTS[:1], "l0")
    size = probe.stats()["bytes_used"]
    assert size > 0
    emb = lazy(saved_models, 2 * size + size // 2, arts, ["l0", "l1", "l2"], merge=True)
    order = []
    for name in ("l0", "l1", "l0", "l2", "l1"):
        emb.encode(TEXTS[:1], name)
        order.append(sorted(emb.resident_names()))
        assert emb.stats()["bytes_used"] <= emb.adapter_memory
    # l2 evicts l1 (least recent: l0 was used again); then l1 evicts l0
    assert order == [["l0"], ["l0", "l1"], ["l0", "l1"], ["l0", "l2"], ["l1", "l2"]]
    stats = emb.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["loads"]) == (1, 4, 2, 4)
    assert stats["bytes_used"] == 2 * size and stats["resident"] == 2
    assert stats["hit_rate"] == pytest.approx(0.2) and stats["load_seconds"]["count"] == 4


def test_merged_only_while_the_budget_holds_every_adapter_merged(saved_models, arts):
    big = lazy(saved_models, "1GB", arts, ["l0", "l1", "f"])
    big.encode(TEXTS[:1], "l0")
    assert big.adapters["l0"].merged
    merged = big.stats()["bytes_used"]
    tight = lazy(saved_models, merged * 2, arts, ["l0", "l1", "l2", "f"])  # 4 merged > 2
    assert not tight.adapters["l0"].merged and tight.adapters["f"].merged  # full: always
    tight.encode(TEXTS[:1], "l0")
    unmerged = tight.stats()["bytes_used"]
    # beyond the per-head overhead, LoRA matrices only (r=8 on a tiny model), the base's
    # weights shared: the float32 factors and their packed copy (float32 here)
    assert 0 < unmerged - HEAD_OVERHEAD < (merged - HEAD_OVERHEAD) / 2
    factors = tight.resident(["l0"])["l0"].lora.factors.values()
    assert unmerged == HEAD_OVERHEAD + 2 * sum(a.nbytes + b.nbytes for a, b in factors)
    assert tight.stats()["unmerged"] == 1 and tight.stats()["merged"] == 0
    tight.encode(TEXTS[:1], "f")
    assert tight.stats()["merged"] == 1


def test_unmerged_factors_are_kept_in_the_compute_dtype(saved_models, arts):
    emb = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH,
                   adapter_memory="1GB", dtype="bfloat16")
    emb.load(arts["l0"], "l0", merge=False)
    emb.encode(TEXTS[:2], "l0")
    factors = [t for pair in emb.resident(["l0"])["l0"].lora.factors.values() for t in pair]
    assert {t.dtype for t in factors} == {torch.bfloat16}  # rounded once, as packing would
    # the factors and their packed copy, 2 bytes per element each
    assert emb.stats()["bytes_used"] == HEAD_OVERHEAD + 2 * 2 * sum(t.numel() for t in factors)
    plain = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH,
                     dtype="bfloat16")
    plain.load(arts["l0"], "l0", merge=True)
    np.testing.assert_allclose(emb.encode(TEXTS, "l0").vectors,
                               plain.encode(TEXTS, "l0").vectors, atol=2e-2)


def test_an_evicted_adapter_gives_the_same_vectors_when_it_comes_back(saved_models, arts):
    emb = lazy(saved_models, 1, arts, ["l0"])  # room for nothing ...
    with pytest.raises(AdapterLoadError, match="raise adapter_memory"):
        emb.encode(TEXTS, "l0")
    probe = lazy(saved_models, "1GB", arts, ["l0"], merge=False)
    probe.encode(TEXTS[:1], "l0")
    one = probe.stats()["bytes_used"]
    emb = lazy(saved_models, one + one // 2, arts, ["l0", "l1"])  # ... room for one head
    first = emb.encode(TEXTS, "l0").vectors
    other = emb.encode(TEXTS, "l1").vectors
    assert emb.resident_names() == {"l1"}
    again = emb.encode(TEXTS, "l0").vectors
    np.testing.assert_array_equal(again, first)
    assert emb.stats()["evictions"] == 2
    plain = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH)
    for name in ("l0", "l1"):
        plain.load(arts[name], name, merge=False)
    np.testing.assert_allclose(first, plain.encode(TEXTS, "l0").vectors, atol=1e-6)
    np.testing.assert_allclose(other, plain.encode(TEXTS, "l1").vectors, atol=1e-6)
    rows = ["l0", "l1", None, "l0"]  # both in one call, though only one fits
    np.testing.assert_allclose(emb.encode(TEXTS[:4], rows).vectors,
                               plain.encode(TEXTS[:4], rows).vectors, atol=1e-6)


def test_a_mixed_batch_counts_its_gathered_factors_against_the_budget(saved_models, arts):
    """Rows of two LoRA adapters in one pass gather each row's factors: while the pass
    runs, those bytes count with the heads', and the least recent head makes room."""
    probe = lazy(saved_models, "1GB", arts, ["l0"], merge=False)
    probe.encode(TEXTS[:1], "l0")
    one = probe.stats()["bytes_used"]
    factors = probe.resident(["l0"])["l0"].lora.factors.values()
    per_row = sum(a.nbytes + b.nbytes for a, b in factors)  # one rank for all four
    emb = lazy(saved_models, 3 * one + one // 4, arts, ["l0", "l1", "l2"], merge=False)
    for name in ("l0", "l1", "l2"):
        emb.encode(TEXTS[:1], name)
    assert emb.resident_names() == {"l0", "l1", "l2"}  # the budget full of heads
    seen, hold = [], emb.engine.working_memory

    @contextlib.contextmanager
    def watched(nbytes):
        with hold(nbytes):
            seen.append((nbytes, emb.stats(), emb.resident_names()))
            yield

    emb.engine.working_memory = watched
    emb.encode(TEXTS[:2], ["l1", "l2"])
    (nbytes, during, resident), = seen
    assert nbytes == 2 * per_row and during["working_bytes"] == nbytes
    assert resident == {"l1", "l2"} and during["evictions"] == 1  # l0: least recent
    assert during["bytes_used"] + nbytes <= emb.adapter_memory
    assert emb.stats()["working_bytes"] == 0  # released when the pass returns
    emb.encode(TEXTS[:2], ["l1", "l1"])  # one adapter: its own pieces, nothing gathered
    assert len(seen) == 1


def test_a_hundred_concurrent_first_requests_build_once(saved_models, arts, monkeypatch):
    emb = lazy(saved_models, "1GB", arts, ["l0", "l1"])
    builds, real = [], emb.engine.build_head
    gate = threading.Event()

    def counted(*args):
        builds.append(args[0])
        gate.wait(5)  # every thread asks while the first build runs
        return real(*args)

    monkeypatch.setattr(emb.engine, "build_head", counted)
    with ThreadPoolExecutor(100) as pool:
        futures = [pool.submit(emb.encode, [TEXTS[i % 4]], "l0") for i in range(100)]
        while emb.stats()["misses"] < 100:
            threading.Event().wait(0.01)
        gate.set()
        vectors = [f.result().vectors[0] for f in futures]
    assert builds == [arts["l0"]]
    stats = emb.stats()
    assert (stats["loads"], stats["misses"], stats["resident"]) == (1, 100, 1)
    np.testing.assert_allclose(vectors[0], emb.encode([TEXTS[0]], "l0").vectors[0], atol=1e-6)


def test_a_broken_adapter_fails_only_its_own_calls(saved_models, arts, tmp_path):
    broken = shutil.copytree(arts["l1"], tmp_path / "broken")
    emb = lazy(saved_models, "1GB", arts, ["l0"])
    emb.load(broken, "broken")
    (broken / artifact.WEIGHTS).unlink()  # gone after registration
    with pytest.raises(AdapterLoadError, match=r"adapter 'broken' cannot be loaded from .*"
                       r"broken.*other adapters keep serving"):
        emb.encode(TEXTS, "broken")
    assert emb.encode(TEXTS, "l0").vectors.shape == (len(TEXTS), emb.dim)
    assert emb.stats()["load_failures"] == 1 and emb.resident_names() == {"l0"}
    shutil.copy(arts["l1"] / artifact.WEIGHTS, broken / artifact.WEIGHTS)  # fixed: retried
    assert emb.encode(TEXTS, "broken").vectors.shape == (len(TEXTS), emb.dim)


def test_unload_and_load_again_never_serves_the_old_head(saved_models, arts):
    emb = lazy(saved_models, "1GB", arts, ["l0"])
    old = emb.encode(TEXTS, "l0").vectors
    emb.unload("l0")
    assert emb.stats()["resident"] == 0 and emb.stats()["bytes_used"] == 0
    emb.load(arts["l1"], "l0")  # the name again, another adapter
    assert not np.allclose(emb.encode(TEXTS, "l0").vectors, old)


def test_without_a_budget_everything_is_built_at_load_and_stays(saved_models, arts):
    emb = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH)
    emb.load(arts["l0"], "l0")
    emb.load(arts["f"], "f")
    stats = emb.stats()
    assert stats["budget"] is None and stats["resident"] == 2 and stats["loads"] == 2
    assert emb.adapters["l0"].merged and emb.resident_names() == {"l0", "f"}
    emb.encode(TEXTS[:4], ["l0", "f", None, "l0"])
    assert emb.stats()["evictions"] == 0 and emb.stats()["resident"] == 2


def test_an_eviction_hands_the_freed_heads_back_to_the_os_at_most_every_trim_interval(
        monkeypatch):
    """glibc keeps freed heads in its heap: after an eviction, before the next build, the
    cache calls malloc_trim (the real one, counted), and not again within TRIM_EVERY_S."""
    from lastlayer.inference import residency

    assert residency.release_freed_memory() is True  # glibc here: the call exists
    calls = []
    real = residency.release_freed_memory
    monkeypatch.setattr(residency, "release_freed_memory", lambda: calls.append(1) or real())
    monkeypatch.setattr(residency, "TRIM_EVERY_S", 3600.0)
    cache = residency.HeadCache(100, build=lambda key: (f"head {key}", 60),
                                estimate=lambda key: 60)
    assert cache.get("a") == "head a" and not calls  # nothing evicted, nothing to trim
    assert cache.get("b") == "head b" and calls == [1]  # a evicted: trimmed once
    assert cache.get("a") == "head a" and calls == [1]  # b evicted within the interval
    assert cache.evictions == 2
    monkeypatch.setattr(residency, "TRIM_EVERY_S", 0.0)
    assert cache.get("b") == "head b" and calls == [1, 1]
