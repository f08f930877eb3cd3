"""The engine's grouped pass: plain LoRA adapters of one shape (and the base's rows) run in
one pass over the base's top-k blocks with per-row factors; every row equals its adapter
run alone, LoRA and full kinds and different k in one batch, merged or not, from threads,
before and after the pass has learnt which linears share an input."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.artifacts import MAX_LENGTH, make_artifact
from helpers.data import TEXTS

from lastlayer import artifact
from lastlayer.core import engine as engine_module
from lastlayer.core.grouped import (
    GroupedLora,
    Layout,
    LoraFactors,
    OneLora,
    input_sets,
    read_factors,
)
from lastlayer.inference import Embedder

ADAPTERS = {  # name: (kind, top_k, seed): four LoRA of one shape, another k, a full kind
    "a": ("lora", 2, 1), "b": ("lora", 2, 2), "c": ("lora", 2, 3), "d": ("lora", 2, 4),
    "k1": ("lora", 1, 5), "full2": ("full", 2, 6),
}
TEXTS16 = [f"{TEXTS[i % len(TEXTS)]} (copy {i})" for i in range(16)]


@pytest.fixture(scope="module")
def artifacts(saved_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("grouped")
    return {arch: {name: make_artifact(saved_models[arch], root / arch / name, kind, k, seed,
                                       arch)
                   for name, (kind, k, seed) in ADAPTERS.items()}
            for arch in ("bert", "llama")}


def loaded(saved_models, artifacts, arch: str, merge: bool = True) -> Embedder:
    emb = Embedder(saved_models[arch], device="cpu", max_length=MAX_LENGTH)
    for name, folder in artifacts[arch].items():
        emb.load(folder, name, merge=merge)
    return emb


def alone(emb: Embedder, texts: list[str], keys: list) -> np.ndarray:
    """Each text by itself, under its own adapter: one head per call, nothing grouped."""
    return np.stack([emb.encode([t], adapter=k).vectors[0]
                     for t, k in zip(texts, keys, strict=True)])


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_mixed_rows_equal_each_adapter_alone(saved_models, artifacts, arch, merge):
    emb = loaded(saved_models, artifacts, arch, merge)
    heads = emb.resident([*"abcd", "full2"])
    assert all(heads[n].lora is not None for n in "abcd")
    assert heads["full2"].lora is None
    names = [*ADAPTERS, None]
    keys = [names[i % len(names)] for i in range(len(TEXTS16))]
    got = emb.encode(TEXTS16, adapter=keys, batch_size=16).vectors
    np.testing.assert_allclose(got, alone(emb, TEXTS16, keys), rtol=0, atol=1e-6)
    emb.engine.grouped = False  # the same rows with every head on its own blocks
    np.testing.assert_allclose(emb.encode(TEXTS16, adapter=keys, batch_size=16).vectors, got,
                               rtol=0, atol=1e-6)
    # every adapter really moves its rows (nothing fell back to the base or a neighbour)
    base = emb.encode(TEXTS16).vectors
    for i, key in enumerate(keys):
        assert (key is None) == np.allclose(got[i], base[i], atol=1e-4), key
    first = emb.encode(TEXTS16, adapter="a").vectors
    for i, key in enumerate(keys):
        assert (key == "a") == np.allclose(got[i], first[i], atol=1e-4), key


@pytest.mark.parametrize("mix", ["distinct", "skewed", "with-base"])
def test_punica_mixes_equal_each_adapter_alone(saved_models, artifacts, mix):
    emb = loaded(saved_models, artifacts, "bert")
    keys = {"distinct": [("a", "b", "c", "d")[i % 4] for i in range(16)],
            "skewed": ["a"] * 11 + ["b"] * 3 + ["c", "d"],
            "with-base": [("a", None)[i % 2] for i in range(16)]}[mix]
    got = emb.encode(TEXTS16, adapter=keys, batch_size=5).vectors
    np.testing.assert_allclose(got, alone(emb, TEXTS16, keys), rtol=0, atol=1e-6)


def test_groups_plan_one_pass_per_shape(saved_models, artifacts):
    emb = loaded(saved_models, artifacts, "bert")
    heads = emb.resident(list(emb.adapters))
    jobs = {key: [] for key in ["a", "full2", "b", "k1", None, "c"]}
    starts = {"a": 2, "b": 2, "c": 2, "full2": 2, "k1": 3, None: 3}
    got = engine_module.groups(jobs, starts, heads)
    assert len(got) == 3 and ["a", "b", "c"] in got and ["full2"] in got
    assert ["k1", None] in got  # the base's rows start where k1's do: one pass
    assert engine_module.groups(jobs, starts, heads, enabled=False) == [[k] for k in jobs]
    assert engine_module.groups({"a": []}, {"a": 2}, heads) == [["a"]]  # one: its own blocks


def test_threads_each_see_their_own_rows(saved_models, artifacts):
    emb = loaded(saved_models, artifacts, "llama")
    mixes = [[("a", "b", "c", "d")[(i + s) % 4] for i in range(16)] for s in range(3)]
    want = [emb.encode(TEXTS16, adapter=keys, batch_size=16).vectors for keys in mixes]
    got: dict[int, np.ndarray] = {}

    def run(s: int) -> None:
        for _ in range(3):
            got[s] = emb.encode(TEXTS16, adapter=mixes[s], batch_size=16).vectors
            np.testing.assert_allclose(got[s], want[s], rtol=0, atol=1e-6)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [0, 1, 2]


def test_more_than_plain_lora_keeps_its_own_head(saved_models, artifacts, tmp_path):
    folder = shutil.copytree(artifacts["bert"]["a"], tmp_path / "dora")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["use_dora"] = True
    (folder / "adapter_config.json").write_text(json.dumps(config))
    emb = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH)
    assert read_factors(emb.model, folder, 2) is None
    assert read_factors(emb.model, artifacts["bert"]["full2"], 2) is None
    factors = read_factors(emb.model, artifacts["bert"]["a"], 2)
    assert factors is not None and factors.top_k == 2
    assert all(a.shape[1] == 8 and b.shape[0] == 8 for a, b in factors.factors.values())


def grouped_view(emb: Embedder) -> GroupedLora:
    (view,) = [v for key, v in emb.engine._views.items() if key[0] == "grouped"]
    return view


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_linears_reading_one_input_share_one_product(saved_models, artifacts, arch):
    emb = loaded(saved_models, artifacts, arch)
    keys = [("a", "b", "c", "d", None)[i % 5] for i in range(len(TEXTS16))]
    first = emb.encode(TEXTS16, adapter=keys, batch_size=16).vectors  # learns the sets
    view = grouped_view(emb)
    shared = {"bert": [("attention.self.query", "attention.self.key",
                        "attention.self.value")],
              "llama": [("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                        ("mlp.gate_proj", "mlp.up_proj")]}[arch]
    learnt = {frozenset(s) for s in view.sets}
    for block in range(2):
        for names in shared:
            assert frozenset(f"{block}.{n}" for n in names) in learnt
    assert sorted(n for s in view.sets for n in s) == sorted(view.names)
    got = emb.encode(TEXTS16, adapter=keys, batch_size=16).vectors  # one product per set
    # the learning call ran again under the sets: its vectors are every later call's
    np.testing.assert_array_equal(got, first)
    np.testing.assert_allclose(got, alone(emb, TEXTS16, keys), rtol=0, atol=1e-6)
    # a call whose linears get other tensors than learnt: each its own product, same rows
    ins = {name: a.shape[0] for name, (a, _) in emb.resident(["a"])["a"].lora.factors.items()}
    view.sets = tuple(tuple(n for n in view.names if ins[n] == size)  # by width, not input
                      for size in sorted(set(ins.values())))
    np.testing.assert_allclose(emb.encode(TEXTS16, adapter=keys, batch_size=16).vectors,
                               got, rtol=0, atol=1e-6)


def test_input_sets_follow_the_tensors_each_linear_got():
    x, y = torch.zeros(1), torch.zeros(1)
    names = ["q", "k", "v", "o"]
    assert input_sets([("q", x), ("k", x), ("v", x), ("o", y)], names) == (("q", "k", "v"),
                                                                            ("o",))
    alone_ = (("q",), ("k",), ("v",), ("o",))
    assert input_sets([("q", x), ("k", x), ("v", x)], names) == alone_  # o never ran
    assert input_sets([("q", x), ("k", x), ("v", x), ("o", y), ("q", y)], names) == alone_


def test_ranks_are_padded_and_the_base_gets_zeros(saved_models):
    emb = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH)
    names = ("0.attention.self.query", "0.attention.self.key")
    view = GroupedLora(emb.model, 1, names)
    d = emb.dim
    gen = torch.Generator().manual_seed(0)

    def factors(rank: int) -> LoraFactors:
        return LoraFactors(1, {n: (torch.randn(d, rank, generator=gen),
                                   torch.randn(rank, d, generator=gen)) for n in names})

    r2, r4 = factors(2), factors(4)
    layout = Layout((names,), names, 4, torch.float32)  # one input set: A side by side
    a, b_q, b_k = view.rows([r2, r4, None], torch.tensor([1, 0, 2, 1]), layout,
                            torch.device("cpu"))
    assert a.shape == (4, d, 8) and b_q.shape == b_k.shape == (4, 4, d)
    # what a memory budget counts for the pass: the whole gathered buffer
    assert a.untyped_storage().nbytes() == view.gathered_bytes([r2, r4, None], 4,
                                                               torch.float32)
    assert view.gathered_bytes([r4], 4, torch.float32) == 0  # one member: its own pieces
    x = torch.randn(4, 6, d, generator=gen)
    low = torch.bmm(x, a)
    for row, member in enumerate([r4, r2, None, r4]):
        for i, (name, b) in enumerate(zip(names, (b_q, b_k), strict=True)):
            delta = low[row, :, 4 * i: 4 * i + 4] @ b[row]
            want = torch.zeros(6, d) if member is None else \
                x[row] @ member.factors[name][0] @ member.factors[name][1]
            torch.testing.assert_close(delta, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_an_unmerged_lora_head_is_its_factors_on_the_base_blocks(saved_models, artifacts,
                                                                  arch, monkeypatch):
    folder = artifacts[arch]["a"]
    emb = Embedder(saved_models[arch], device="cpu", max_length=MAX_LENGTH)
    peft = emb.engine.build_head(folder, artifact.read(folder), merge=False)
    assert len(peft.blocks) == 2 and not isinstance(peft.module, OneLora)  # PEFT's layers
    monkeypatch.setattr(emb.engine, "build_head", lambda *a: pytest.fail("PEFT layers built"))
    emb.load(folder, "a", merge=False)
    head = emb.resident(["a"])["a"]
    assert isinstance(head.module, OneLora) and head.blocks == () and not head.merged
    assert head.module.grouped is grouped_view(emb)  # the base's blocks, shared
    for batch in (TEXTS16[:1], TEXTS16):  # every row one adapter: plain matmuls
        got = emb.encode(batch, adapter="a", batch_size=16).vectors
        np.testing.assert_allclose(got, alone(emb, batch, ["a"] * len(batch)), rtol=0,
                                   atol=1e-6)
        want = emb.engine.embed(batch, ["peft"] * len(batch), {"peft": peft}, 16).vectors
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    monkeypatch.undo()
    emb.load(folder, "merged", merge=True)
    np.testing.assert_allclose(emb.encode(TEXTS16, adapter="a").vectors,
                               emb.encode(TEXTS16, adapter="merged").vectors, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Found missing adapter keys")  # no DoRA magnitudes saved
def test_an_unmerged_head_beyond_plain_lora_keeps_peft_layers(saved_models, artifacts,
                                                              tmp_path):
    folder = shutil.copytree(artifacts["bert"]["a"], tmp_path / "dora")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["use_dora"] = True
    (folder / "adapter_config.json").write_text(json.dumps(config))
    emb = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH)
    emb.load(folder, "dora", merge=False)
    head = emb.resident(["dora"])["dora"]
    assert head.lora is None and len(head.blocks) == 2 and not isinstance(head.module, OneLora)


def test_a_compact_module_refuses_factors_of_another_shape(saved_models, artifacts):
    emb = Embedder(saved_models["bert"], device="cpu", max_length=MAX_LENGTH)
    factors = read_factors(emb.model, artifacts["bert"]["a"], 2)
    view = GroupedLora(emb.model, 2, factors.shape[1][:-1])
    with pytest.raises(ValueError, match="factors of shape"):
        OneLora(view, factors)
