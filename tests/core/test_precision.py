"""Precision auto: the choice from the hardware (patched each way, and this machine's own),
explicit values winning, adapters moving between fp32 and bf16 bases, the int8 trunk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.artifacts import MAX_LENGTH, artifact_meta, make_artifact, shipped_artifacts
from helpers.data import TEXTS
from torch import nn

from lastlayer import artifact
from lastlayer.config import ConfigError, ModelConfig, load_recipe
from lastlayer.core import precision
from lastlayer.core.encoder import load_encoder, weights_fingerprint
from lastlayer.inference import Embedder

AMX = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx2 avx512f avx512_bf16"
AVX2 = "fpu sse2 avx avx2 fma"
CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {}\n\nprocessor\t: 1\n"


@pytest.fixture(autouse=True)
def hardware_decides(monkeypatch):
    """Undo the suite's pin (tests/conftest.py): here the hardware decides ``auto``."""
    monkeypatch.delenv(precision.PIN_ENV, raising=False)
    precision.detect.cache_clear()
    yield
    precision.detect.cache_clear()


def test_the_pin_decides_instead_of_the_hardware(cpu_with, monkeypatch):
    cpu_with(AMX)
    monkeypatch.setenv(precision.PIN_ENV, "float32")
    assert str(precision.detect("cpu")) == "fp32: LASTLAYER_AUTO_PRECISION=float32"
    assert precision.training_precision("auto", on_cpu=True) == "no"
    precision.detect.cache_clear()
    monkeypatch.setenv(precision.PIN_ENV, "fp8")
    with pytest.raises(ConfigError, match="set it to float32 or bfloat16"):
        precision.detect("cpu")


@pytest.fixture
def cpu_with(monkeypatch):
    """Make the CPU report the given flags (a fresh decision: ``detect`` is cached)."""

    def patch(flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: set(flags.split()))
        precision.detect.cache_clear()

    yield patch
    precision.detect.cache_clear()


def bf16_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------------------
# The decision.


def test_flags_are_read_from_cpuinfo_on_x86_and_arm():
    assert precision.cpu_flags(CPUINFO.format(AMX)) == set(AMX.split())
    assert "bf16" in precision.cpu_flags("Features\t: fp asimd sve bf16 i8mm\n")
    assert precision.cpu_flags("") == set()


@pytest.mark.parametrize(("flags", "dtype", "reason"), [
    (AMX, "bfloat16", "bf16: AMX found"),
    (ZEN4, "bfloat16", "bf16: AVX512-BF16 found"),
    ("fp asimd bf16", "bfloat16", "bf16: Arm BF16 found"),
    (AVX2, "float32", "fp32: no native bf16 on this CPU"),
    ("", "float32", "fp32: the CPU's features are unknown here"),
])
def test_auto_follows_the_cpu(cpu_with, flags, dtype, reason):
    cpu_with(flags)
    choice = precision.detect("cpu")
    assert (choice.dtype, str(choice)) == (dtype, reason)
    assert precision.inference_dtype("auto", "cpu") == dtype
    assert precision.training_precision("auto", on_cpu=True) == ("bf16" if choice.bf16 else "no")
    assert precision.cpu_has_fast_bf16() is (choice.bf16 or not flags)  # unknown: oneDNN says


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_gpu(monkeypatch, native):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tiny GPU")
    precision.detect.cache_clear()
    try:
        choice = precision.detect("cuda")
        assert str(choice) == ("bf16: Tiny GPU supports it" if native
                               else "fp32: no native bf16 on Tiny GPU")
        assert precision.training_precision("auto", on_cpu=False) == ("bf16" if native else "no")
        assert precision.inference_dtype("auto", "cuda:0") == choice.dtype
    finally:
        precision.detect.cache_clear()


def test_the_real_detection_on_this_machine():
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() \
        else set()
    precision.detect.cache_clear()
    choice = precision.detect("cpu")
    native = bool({"amx_bf16", "avx512_bf16"} & flags)
    assert choice.bf16 is native, (choice, sorted(flags & {"amx_bf16", "avx512_bf16", "avx2"}))
    if native:  # oneDNN agrees that bf16 matmuls run natively here
        assert torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert precision.detect("cpu") is choice  # decided once


def test_explicit_values_win(cpu_with, saved_models):
    cpu_with(AMX)
    assert precision.inference_dtype("float32", "cpu") == "float32"
    assert precision.training_precision("no", on_cpu=True) == "no"
    assert precision.inference_dtype("auto", "cpu", quantization="8bit") == "float32"
    assert Embedder(saved_models["bert"], device="cpu", dtype="auto").model.dtype == torch.bfloat16
    assert Embedder(saved_models["bert"], device="cpu").model.dtype == torch.bfloat16  # default
    assert Embedder(saved_models["bert"], device="cpu",
                    dtype="float32").model.dtype == torch.float32
    config = ModelConfig(name_or_path=str(saved_models["bert"]), dtype="auto")
    assert Embedder(config, device="cpu").model.dtype == torch.bfloat16
    config = ModelConfig(name_or_path=str(saved_models["bert"]))  # a config keeps its dtype
    assert Embedder(config, device="cpu").model.dtype == torch.float32
    cpu_with(AVX2)
    assert Embedder(saved_models["bert"], device="cpu", dtype="auto").model.dtype == torch.float32
    assert Embedder(saved_models["bert"], device="cpu",
                    dtype="bfloat16").model.dtype == torch.bfloat16


def test_train_mixed_precision_auto_follows_the_cpu(cpu_with, saved_models,
                                                                       tmp_path):
    from lastlayer.training.accelerator import make_accelerator

    corpus = tmp_path / "docs.txt"
    corpus.write_text("One document.\nAnother one.\n")
    recipe = load_recipe(None, [f"model.name_or_path={saved_models['bert']}", "train.cpu=true",
                                f"data.train={corpus}", f"output_dir={tmp_path / 'x'}",
                                "train.mixed_precision=auto"])
    assert recipe.train.mixed_precision == "auto"
    for flags, expected in ((AMX, "bf16"), (AVX2, "no")):
        cpu_with(flags)
        assert make_accelerator(recipe).mixed_precision == expected
    explicit = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train,
                                                                     mixed_precision="no"))
    cpu_with(AMX)
    assert make_accelerator(explicit).mixed_precision == "no"


# ---------------------------------------------------------------------------------------
# Adapters move between precisions.


def test_the_fingerprint_is_of_the_weights_as_stored(saved_models):
    config = ModelConfig(name_or_path=str(saved_models["bert"]))
    fp32 = load_encoder(config, "cpu")
    bf16 = load_encoder(dataclasses.replace(config, dtype="bfloat16"), "cpu")
    assert bf16.model.dtype == torch.bfloat16 and fp32.fingerprint == bf16.fingerprint
    assert weights_fingerprint(fp32.model) == fp32.fingerprint  # as artifacts always had it
    assert weights_fingerprint(fp32.model, as_stored=False) == fp32.fingerprint
    assert weights_fingerprint(bf16.model, as_stored=False) != fp32.fingerprint  # rounded


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_an_adapter_round_trips_between_fp32_and_bf16(saved_models, tmp_path, kind):
    base = saved_models["bert"]
    trained = {"fp32": make_artifact(base, tmp_path / "fp32", kind, 2, seed=1)}
    if kind == "lora":  # trained on a bf16 load of the base (the helper adapts LoRA only)
        config = ModelConfig(name_or_path=str(base), max_length=MAX_LENGTH, dtype="bfloat16")
        bf16_encoder = load_encoder(config, "cpu")
        meta = artifact_meta(base.name, kind, 2, max_length=MAX_LENGTH)
        meta = dataclasses.replace(meta, name="bf16", base=dataclasses.replace(
            meta.base, fingerprint=bf16_encoder.fingerprint, dtype="bfloat16"))
        trained["bf16"] = make_artifact(bf16_encoder, tmp_path / "bf16", kind, 2, seed=1,
                                        files=artifact.side_files(meta, None, "", [], ""))
    vectors = {}
    for dtype in ("float32", "bfloat16"):
        emb = Embedder(base, device="cpu", dtype=dtype, max_length=MAX_LENGTH)
        for name, folder in trained.items():
            emb.load(folder, name=name)
        vectors[dtype] = emb.encode_all(TEXTS, [None, *trained])
    for name in (None, *trained):
        cosine = bf16_cosine(vectors["float32"][name], vectors["bfloat16"][name])
        assert cosine.min() >= 0.999, (name, cosine)


def test_a_legacy_bf16_fingerprint_still_matches_a_bf16_base(saved_models, tmp_path):
    base = saved_models["bert"]
    folder = make_artifact(base, tmp_path / "old", "lora", 2, seed=1)
    meta = artifact.read(folder)
    emb = Embedder(base, device="cpu", dtype="bfloat16", max_length=MAX_LENGTH)
    legacy = weights_fingerprint(emb.model, as_stored=False)  # how a bf16 load was recorded
    (folder / artifact.METADATA).write_text(dataclasses.replace(meta, base=dataclasses.replace(
        meta.base, fingerprint=legacy, dtype="bfloat16")).to_json())
    assert emb.load(folder) == "old"


@pytest.mark.slow
def test_the_shipped_artifacts_load_and_serve_in_bf16():
    folders = shipped_artifacts()
    texts = ["Chest pain and shortness of breath in a patient with diabetes.",
             "Oil prices rose as traders weighed new output cuts."]
    for folder in folders[:2]:
        meta = artifact.read(folder)
        vectors = {}
        for dtype in ("float32", "bfloat16"):
            emb = Embedder(meta.base.model, device="cpu", dtype=dtype,
                           max_length=meta.embedding.max_length)
            vectors[dtype] = emb.encode(texts, adapter=emb.load(folder)).vectors
        assert bf16_cosine(vectors["float32"], vectors["bfloat16"]).min() >= 0.999, folder


# ---------------------------------------------------------------------------------------
# The int8 trunk.


def quantized_linears(module: nn.Module) -> int:
    return sum(type(m).__module__.startswith("torch.ao.nn.quantized") for m in module.modules())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_an_int8_trunk_keeps_heads_and_the_base_in_their_precision(saved_models, tmp_path,
                                                                   dtype):
    base = saved_models["bert"]
    folder = make_artifact(base, tmp_path / "a", "lora", 2, seed=1)
    plain = Embedder(base, device="cpu", dtype="float32", max_length=MAX_LENGTH)
    emb = Embedder(base, device="cpu", dtype=dtype, max_length=MAX_LENGTH, quantize="int8")
    for e in (plain, emb):
        e.load(folder, name="a")
    assert quantized_linears(emb.model) == 0  # the base itself is never changed
    assert quantized_linears(emb.engine.trunk_model) > 0
    assert quantized_linears(emb.resident(["a"])["a"].module) == 0
    expected, got = plain.encode_all(TEXTS, [None, "a"]), emb.encode_all(TEXTS, [None, "a"])
    for name in (None, "a"):
        assert bf16_cosine(expected[name], got[name]).min() > 0.99, name


def test_bad_quantize_values_are_refused(saved_models):
    with pytest.raises(ConfigError, match="quantize must be one of int8"):
        Embedder(saved_models["bert"], quantize="int4")
    with pytest.raises(ConfigError, match="cannot be combined with quantization=8bit"):
        Embedder(saved_models["bert"], quantize="int8", quantization="8bit")


def test_eval_takes_dtype_auto_and_an_int8_trunk(saved_models, tmp_path, capsys):
    import gzip
    import json

    from helpers.data import MEDICAL

    from lastlayer.cli import main

    with gzip.open(MEDICAL, "rt") as lines:  # a small labelled sample of the shipped data
        rows = [json.loads(line) for _, line in zip(range(60), lines, strict=False)]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    results = {}
    for flags in ([], ["--dtype", "auto"], ["--dtype", "float32", "--quantize", "int8"]):
        assert main(["eval", str(saved_models["bert"]), "--data", str(data), "--json",
                     "--no-clustering", "--k", "3", *flags]) == 0
        results[" ".join(flags)] = json.loads(capsys.readouterr().out)["knn_accuracy"]
    assert all(0 <= value <= 1 for value in results.values()), results
    with pytest.raises(SystemExit) as stop:  # argparse: not one of the menu's values
        main(["eval", str(saved_models["bert"]), "--data", str(data), "--quantize", "int4"])
    assert stop.value.code == 2


def test_bf16_on_cpu_bounds_onednn_kernel_cache_unless_the_user_set_it(saved_models,
                                                                      monkeypatch):
    """Without the bound a server's RSS grew with every new batch shape (docs/precision.md)."""
    import os

    monkeypatch.delenv(precision.KERNEL_CACHE_ENV, raising=False)
    load_encoder(ModelConfig(name_or_path=str(saved_models["bert"])), "cpu")  # fp32: untouched
    assert precision.KERNEL_CACHE_ENV not in os.environ
    load_encoder(ModelConfig(name_or_path=str(saved_models["bert"]), dtype="bfloat16"), "cpu")
    assert os.environ[precision.KERNEL_CACHE_ENV] == "64"
    monkeypatch.setenv(precision.KERNEL_CACHE_ENV, "512")
    load_encoder(ModelConfig(name_or_path=str(saved_models["bert"]), dtype="bfloat16"), "cpu")
    assert os.environ[precision.KERNEL_CACHE_ENV] == "512"
