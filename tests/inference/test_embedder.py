"""The Embedder: one base, many adapters of both kinds, mixed per row, each row equal to plain
PEFT on a fresh base; encode_all, threads, routing plumbing, the base never changes, errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.artifacts import MAX_LENGTH, make_artifact, shipped_artifacts
from helpers.data import ROOT, TEXTS
from helpers.models import assert_unchanged, snapshot
from helpers.tiny import tiny_model, tiny_tokenizer

from lastlayer import artifact
from lastlayer.artifact import ArtifactError
from lastlayer.config import ConfigError, ModelConfig
from lastlayer.core import split as split_module
from lastlayer.core.encoder import load_encoder, mean_pool
from lastlayer.inference import BaseMismatchError, Embedder, UnknownAdapterError
from lastlayer.inference import embedder as embedder_module

ADAPTERS = {  # name: (kind, top_k, seed): three split points, both kinds
    "lora2": ("lora", 2, 1),
    "full3": ("full", 3, 2),
    "lora1": ("lora", 1, 3),
}


@pytest.fixture(scope="module")
def artifacts(saved_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """For tiny BERT and Llama: a LoRA top-2, a full top-3 and a LoRA top-1 adapter."""
    root = tmp_path_factory.mktemp("artifacts")
    return {arch: {name: make_artifact(saved_models[arch], root / arch / name, kind, k, seed,
                                       arch)
                   for name, (kind, k, seed) in ADAPTERS.items()}
            for arch in ("bert", "llama")}


def plain_peft(model_dir: Path, folder: Path | None, text: str,
               quantization: str | None = None) -> np.ndarray:
    """``text`` alone through ``PeftModel.from_pretrained`` on a freshly loaded base, pooled
    as the artifact says (the base: as the Embedder's defaults)."""
    from peft import PeftModel

    settings = {"max_length": MAX_LENGTH}
    if folder is not None:
        emb = artifact.read(folder).embedding
        settings = {"pooling": emb.pooling, "normalize": emb.normalize,
                    "max_length": emb.max_length}
    encoder = load_encoder(ModelConfig(name_or_path=str(model_dir), quantization=quantization,
                                       **settings), device="cpu")
    if folder is not None:
        encoder.model = PeftModel.from_pretrained(encoder.model, str(folder)).eval()
    return encoder.encode([text], progress=False)[0].numpy()


def embedder(saved_models, arch: str = "bert", **kwargs) -> Embedder:
    """An Embedder on a tiny model, in float32 unless ``dtype`` says (these tests compare
    with plain PEFT in float32 exactly; precision auto is tests/core/test_precision.py's)."""
    kwargs.setdefault("dtype", "float32")
    return Embedder(saved_models[arch], device="cpu", max_length=MAX_LENGTH, **kwargs)


# ---------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_mixed_rows_equal_plain_peft_row_by_row(saved_models, artifacts, arch, merge):
    emb = embedder(saved_models, arch)
    for name, folder in artifacts[arch].items():
        assert emb.load(folder, merge=merge) == name
    kinds = {name: info.kind for name, info in emb.adapters.items()}
    assert kinds == {name: kind for name, (kind, _, _) in ADAPTERS.items()}
    assert emb.adapters["full3"].merged and emb.adapters["lora2"].merged is merge
    keys = ["lora2", "full3", None, "lora1", "lora2", None, "full3"]
    got = emb.encode(TEXTS, adapter=keys, batch_size=3).vectors
    assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
    # unmerged is the same arithmetic as PEFT; merged LoRA differs by rounding only
    atol = 1e-5 if merge else 1e-6
    for text, key, row in zip(TEXTS, keys, got, strict=True):
        folder = None if key is None else artifacts[arch][key]
        np.testing.assert_allclose(row, plain_peft(saved_models[arch], folder, text),
                                   rtol=0, atol=atol, err_msg=str(key))
    # every adapter really changes the vectors: nothing fell back to the base
    base = emb.encode(TEXTS).vectors
    for i, key in enumerate(keys):
        assert (key is None) == np.allclose(got[i], base[i], atol=1e-4), key


def test_rows_come_back_in_input_order(saved_models, artifacts):
    emb = embedder(saved_models)
    emb.load(artifacts["bert"]["lora2"])
    keys = ["lora2", None] * 3 + ["lora2"]
    together = emb.encode(TEXTS, adapter=keys, batch_size=2).vectors
    alone = np.stack([emb.encode([t], adapter=k).vectors[0]
                      for t, k in zip(TEXTS, keys, strict=True)])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    backwards = emb.encode(TEXTS[::-1], adapter=keys[::-1], batch_size=2).vectors
    np.testing.assert_allclose(backwards[::-1], together, rtol=0, atol=1e-6)
    assert emb.encode([], adapter="lora2").vectors.shape == (0, 32)
    np.testing.assert_array_equal(emb.encode(TEXTS[0]).vectors, emb.encode([TEXTS[0]]).vectors)


def test_encode_all_equals_separate_runs(saved_models, artifacts):
    emb = embedder(saved_models, "llama")
    for folder in artifacts["llama"].values():
        emb.load(folder)
    every = emb.encode_all(TEXTS, batch_size=3)
    assert list(every) == list(ADAPTERS)
    with_base = emb.encode_all(TEXTS, adapters=["lora1", None], batch_size=3)
    for name, vectors in [*every.items(), *with_base.items()]:
        np.testing.assert_allclose(vectors, emb.encode(TEXTS, adapter=name, batch_size=3).vectors,
                                   rtol=0, atol=1e-6, err_msg=str(name))


def test_one_bottom_pass_per_batch_for_every_adapter(saved_models, artifacts, monkeypatch):
    """Three adapters at three split points: one bottom pass, then the base's blocks once
    between split points, each adapter's own blocks on top."""
    emb = embedder(saved_models)
    for folder in artifacts["bert"].values():
        emb.load(folder)
    calls: list[str] = []
    for cls in (split_module.BottomRunner, split_module.MiddleRunner):
        original = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, *a, _o=original, **k:
                            calls.append(type(self).__name__) or _o(self, *a, **k))
    emb.encode_all(TEXTS, batch_size=len(TEXTS))
    assert calls == ["BottomRunner", "MiddleRunner", "MiddleRunner"]
    calls.clear()
    emb.encode(TEXTS, adapter=["lora1", None] * 3 + ["lora1"], batch_size=len(TEXTS))
    assert calls == ["BottomRunner"]


def test_each_adapter_pools_truncates_and_normalises_as_trained(saved_models, tmp_path):
    folder = make_artifact(saved_models["bert"], tmp_path / "cls", "lora", 2, 5, "bert",
                           pooling="cls", normalize=False, max_length=8)
    emb = embedder(saved_models)
    emb.load(folder)
    info = emb.adapters["cls"]
    assert (info.pooling, info.normalize, info.max_length) == ("cls", False, 8)
    got = emb.encode(TEXTS[:3], adapter=["cls", None, "cls"]).vectors
    for text, key, row in zip(TEXTS[:3], ["cls", None, "cls"], got, strict=True):
        expected = plain_peft(saved_models["bert"], folder if key else None, text)
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-5)
    assert abs(np.linalg.norm(got[0]) - 1) > 1e-3 and abs(np.linalg.norm(got[1]) - 1) < 1e-5
    normalised = emb.encode(TEXTS[:3], adapter="cls", normalize=True).vectors
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1, atol=1e-6)
    # the same text under two token limits: two rows in one bottom pass, both right
    both = emb.encode_all(TEXTS[:1], adapters=["cls", None])
    np.testing.assert_allclose(both["cls"][0], got[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(both[None][0], emb.encode(TEXTS[:1]).vectors[0], rtol=0, atol=1e-6)
    # the tokens each row was embedded from: its own limit, special tokens included
    result = emb.encode(TEXTS[:3], adapter=["cls", None, "cls"])
    vectors, tokens = result.vectors, result.tokens
    assert result.routed is None
    np.testing.assert_array_equal(vectors, got)
    limits = [8, MAX_LENGTH, 8]
    assert tokens.tolist() == [len(emb.tokenizer(t, truncation=True, max_length=n)["input_ids"])
                               for t, n in zip(TEXTS[:3], limits, strict=True)]
    full = len(emb.tokenizer(TEXTS[0], truncation=True, max_length=MAX_LENGTH)["input_ids"])
    assert tokens[0] == 8 < full  # the first text is cut at the adapter's limit


# ---------------------------------------------------------------------------------------
# Threads, and a base that never changes


def test_two_threads_with_two_adapters_equal_sequential_runs(saved_models, artifacts):
    emb = embedder(saved_models)
    emb.load(artifacts["bert"]["lora2"])
    emb.load(artifacts["bert"]["full3"])
    jobs = {"lora2": TEXTS, "full3": TEXTS[::-1]}
    expected = {name: emb.encode(texts, adapter=name, batch_size=2).vectors
                for name, texts in jobs.items()}
    results: dict[tuple[str, int], np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def encode(name: str) -> None:
        try:
            start.wait()
            for i in range(4):
                results[(name, i)] = emb.encode(jobs[name], adapter=name, batch_size=2).vectors
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    def churn() -> None:  # registration under way at the same time
        try:
            start.wait()
            for i in range(3):
                emb.load(artifacts["bert"]["lora1"], name=f"extra{i}")
                emb.unload(f"extra{i}")
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=encode, args=(name,)) for name in jobs]
    threads.append(threading.Thread(target=churn))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 8 and list(emb.adapters) == ["lora2", "full3"]
    for (name, _), vectors in results.items():
        np.testing.assert_array_equal(vectors, expected[name])


def test_the_base_never_changes(saved_models, artifacts):
    emb = embedder(saved_models, "llama")
    before = snapshot(emb.model)
    base_vectors = emb.encode(TEXTS).vectors
    for name, folder in artifacts["llama"].items():
        emb.load(folder, name=f"{name}-m", merge=True)
        emb.load(folder, name=f"{name}-u", merge=False)
    assert_unchanged(emb.model, before)
    emb.encode(TEXTS, adapter=[f"{n}-{m}" for n in ADAPTERS for m in "mu"] + [None])
    emb.encode_all(TEXTS)
    for name in list(emb.adapters):
        emb.unload(name)
    assert_unchanged(emb.model, before)
    assert emb.adapters == {}
    np.testing.assert_array_equal(emb.encode(TEXTS).vectors, base_vectors)
    # the base rows equal the plain base model's
    np.testing.assert_allclose(base_vectors[1], plain_peft(saved_models["llama"], None,
                                                           TEXTS[1]), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Errors


def test_an_adapter_of_another_base_is_refused(saved_models, artifacts, tmp_path):
    emb = embedder(saved_models)
    with pytest.raises(BaseMismatchError, match=r"trained on 'tiny-llama', but this "
                       r"Embedder's base is 'tiny-bert': load it onto Embedder\('tiny-llama'\)"):
        emb.load(artifacts["llama"]["lora2"])
    # same name, other weights: another tiny-bert
    other = tmp_path / "elsewhere" / "tiny-bert"
    tiny_model("bert", num_layers=4, seed=7).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    foreign = make_artifact(other, tmp_path / "foreign", "lora", 2, 1, "bert")
    with pytest.raises(BaseMismatchError, match="trained on other weights of 'tiny-bert'.*"
                       "fingerprint .*another file or revision"):
        emb.load(foreign)
    assert emb.adapters == {}
    # another compute dtype is the same base (the fingerprint is of the weights as stored):
    # tests/core/test_precision.py checks the vectors of such a round trip
    half = embedder(saved_models, dtype=torch.bfloat16)
    assert half.load(artifacts["bert"]["lora2"]) == "lora2"


def test_names_are_checked(saved_models, artifacts):
    emb = embedder(saved_models)
    emb.load(artifacts["bert"]["lora2"])
    emb.load(artifacts["bert"]["lora1"], name="news")
    with pytest.raises(ValueError, match="'lora2' is already loaded"):
        emb.load(artifacts["bert"]["lora2"])
    with pytest.raises(ValueError, match="'auto' is reserved"):
        emb.load(artifacts["bert"]["lora2"], name="auto")
    listing = r"no adapter named 'medical' is loaded; loaded: 'lora2', 'news'"
    for call in (lambda: emb.encode(TEXTS, adapter="medical").vectors,
                 lambda: emb.encode(TEXTS[:2], adapter=["news", "medical"]).vectors,
                 lambda: emb.encode_all(TEXTS, adapters=["news", "medical"]),
                 lambda: emb.unload("medical")):
        with pytest.raises(UnknownAdapterError, match=listing):
            call()
    assert issubclass(UnknownAdapterError, KeyError)
    with pytest.raises(ValueError, match="a list of 2 entries for 7 texts"):
        emb.encode(TEXTS, adapter=["news", None])
    with pytest.raises(ValueError, match="routes a whole call"):
        emb.encode(TEXTS[:2], adapter=["auto", None])
    emb.unload("news")
    with pytest.raises(UnknownAdapterError, match="loaded: 'lora2'"):
        emb.encode(TEXTS, adapter="news")


def test_bad_artifact_folders(saved_models, artifacts, tmp_path):
    emb = embedder(saved_models)
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        emb.load(tmp_path / "missing")
    with pytest.raises(ArtifactError, match="no lastlayer.json"):
        emb.load(saved_models["bert"])
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in artifacts["bert"]["lora2"].iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = broken / artifact.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        emb.load(broken)
    with pytest.raises(ConfigError, match=r"is an adapter, not a base model: use "
                       r"Embedder\('tiny-bert'\) and then \.load"):
        Embedder(artifacts["bert"]["lora2"])
    assert emb.adapters == {}


# ---------------------------------------------------------------------------------------
# Routing plumbing (the signature math lives in lastlayer.core.routing)


def test_route_needs_a_signature(saved_models, artifacts):
    emb = embedder(saved_models)  # the test artifacts carry no routing.safetensors
    emb.load(artifacts["bert"]["lora2"])
    for call in (lambda: emb.route(TEXTS), lambda: emb.encode(TEXTS, adapter="auto").vectors):
        with pytest.raises(ValueError, match="no loaded adapter has a routing signature "
                           r"\(loaded: 'lora2'\)"):
            call()


def test_auto_routes_from_the_trunk_it_embeds_with(saved_models, artifacts, monkeypatch,
                                                   tmp_path):
    """A stand-in ``routing`` module: the Embedder hands it the mean-pooled inputs of each
    signature's block, from the same bottom pass it embeds with."""
    short = make_artifact(saved_models["bert"], tmp_path / "short", "lora", 2, 9, "bert",
                          max_length=6)
    layers = {"lora2": 2, "full3": 1, "short": 2}  # block L−k of each (L = 4)
    seen: list[dict[int, np.ndarray]] = []

    def assign(signatures, pooled):
        assert sorted(signatures) == sorted(layers)
        seen.append(pooled)
        options = [*sorted(signatures), None]
        first = pooled[min(pooled)]
        return [options[int(abs(row[0]) * 1e4) % len(options)] for row in first]

    fake = types.SimpleNamespace(
        read_signature=lambda folder: types.SimpleNamespace(
            layer=layers[Path(folder).name], centroids=None, threshold=0.0)
        if Path(folder).name in layers else None,
        assign=assign,
    )
    monkeypatch.setattr(embedder_module, "_routing", lambda: fake)
    emb = embedder(saved_models)
    for folder in (artifacts["bert"]["lora2"], artifacts["bert"]["full3"], short,
                   artifacts["bert"]["lora1"]):
        emb.load(folder)
    assert [i.routable for i in emb.adapters.values()] == [True, True, True, False]

    names = emb.route(TEXTS, batch_size=4)
    assert len(names) == len(TEXTS) and set(names) <= {*layers, None}
    assert len(set(names)) >= 3, names  # the stand-in spreads the texts
    # pooled[layer] is the masked mean of block `layer`'s inputs, rows in batch order
    reference = load_encoder(ModelConfig(name_or_path=str(saved_models["bert"]),
                                         max_length=MAX_LENGTH), device="cpu")
    order = sorted(range(len(TEXTS)), key=lambda i: -len(TEXTS[i]))[:4]
    batch = reference.tokenize([TEXTS[i] for i in order])
    hidden = reference.model(**batch, output_hidden_states=True).hidden_states
    for layer in (1, 2):
        expected = mean_pool(hidden[layer], batch["attention_mask"]).detach().numpy()
        np.testing.assert_allclose(seen[0][layer], expected, rtol=0, atol=1e-5)

    seen.clear()
    calls: list[int] = []
    original = split_module.BottomRunner.forward
    monkeypatch.setattr(split_module.BottomRunner, "forward",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    routed = emb.encode(TEXTS, adapter="auto", batch_size=4).vectors
    extra = sum(1 for i in range(len(TEXTS)) if names[i] == "short")
    assert len(calls) == 2 + (extra > 0)  # one bottom pass per batch (+ the short rows)
    np.testing.assert_allclose(routed, emb.encode(TEXTS, adapter=names, batch_size=4).vectors,
                               rtol=0, atol=1e-6)
    result = emb.encode(TEXTS, adapter="auto", batch_size=4)  # names from the same pass
    assert result.routed == names
    np.testing.assert_array_equal(result.vectors, routed)
    limits = [6 if name == "short" else MAX_LENGTH for name in names]  # the routed limit
    assert result.tokens.tolist() == [
        len(emb.tokenizer(t, truncation=True, max_length=n)["input_ids"])
        for t, n in zip(TEXTS, limits, strict=True)]


def test_auto_routes_with_real_signatures(saved_models, artifacts, tmp_path):
    """End to end with lastlayer.core.routing: two adapters signed on two unlike corpora
    (clinical prose, digit lists); held-out texts of each go to its adapter, and an
    "auto" batch embeds each row exactly as its routed adapter does."""
    import shutil

    from lastlayer.core.routing import signature_for_texts, write_signature

    rng = np.random.default_rng(0)
    words = ["patient", "therapy", "clinical", "cardiac", "trial", "dose", "tumor", "blood"]
    prose = [" ".join(rng.choice(words, size=12)) + "." for _ in range(60)]
    digits = [" ".join(str(d) for d in rng.integers(0, 10, size=12)) for _ in range(60)]
    reference = load_encoder(ModelConfig(name_or_path=str(saved_models["bert"]),
                                         max_length=MAX_LENGTH), device="cpu")
    folders = {}
    for name, source, domain in (("prose", "lora2", prose), ("digits", "full3", digits)):
        folder = shutil.copytree(artifacts["bert"][source], tmp_path / name)
        k = artifact.read(folder).adapter.top_k
        write_signature(folder, signature_for_texts(reference, domain[:48], k,
                                                    progress=False))
        folders[name] = folder
    emb = embedder(saved_models)
    for name, folder in folders.items():
        emb.load(folder, name=name)
    held_out = prose[48:] + digits[48:]
    names = emb.route(held_out)
    assert names[:12].count("prose") >= 10 and names[12:].count("digits") >= 10, names
    np.testing.assert_allclose(emb.encode(held_out, adapter="auto").vectors,
                               emb.encode(held_out, adapter=names).vectors, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------
# bitsandbytes, the public name, the shipped artifacts


@pytest.mark.bnb
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_a_quantized_base_mixes_unmerged_lora_and_base_rows(saved_models, artifacts, tmp_path,
                                                            bits):
    pytest.importorskip("bitsandbytes")
    folder = make_artifact(saved_models["bert"], tmp_path / "q", "lora", 2, 4, "bert",
                           quantization=bits)
    emb = embedder(saved_models, quantization=bits)
    before = snapshot(emb.model)
    with pytest.raises(ValueError, match=f"cannot merge LoRA adapter 'q' into a {bits}"):
        emb.load(folder, merge=True)
    with pytest.raises(BaseMismatchError, match=f"quantization {bits} here vs None in training"):
        emb.load(artifacts["bert"]["lora2"])
    emb.load(folder)
    assert emb.adapters["q"].merged is False
    assert emb.resident(["q"])["q"].blocks == ()  # its factors on the quantized blocks
    for keys in (["q", None, "q", None], ["q"] * 4):  # grouped with the base; alone
        got = emb.encode(TEXTS[:4], adapter=keys, batch_size=4).vectors
        for text, key, row in zip(TEXTS[:4], keys, got, strict=True):
            expected = plain_peft(saved_models["bert"], folder if key else None, text, bits)
            np.testing.assert_allclose(row, expected, rtol=0, atol=1e-5)
    assert not np.allclose(got[0], emb.encode(TEXTS[:1]).vectors[0], atol=1e-4)
    assert_unchanged(emb.model, before)


def test_the_package_exports_embedder_lazily():
    code = ("import sys, lastlayer; assert 'torch' not in sys.modules; "
            "from lastlayer import Embedder; print(Embedder.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "lastlayer.inference.embedder"


@pytest.mark.slow
def test_the_shipped_artifacts_on_one_embedder_per_base():
    from helpers.plain_peft import load_adapter

    from lastlayer.core.target import model_config_of

    folders = shipped_artifacts()
    by_base: dict[str, list[Path]] = {}
    for folder in folders:
        by_base.setdefault(artifact.read(folder).base.model, []).append(folder)
    assert sorted(len(v) for v in by_base.values()) == [1, 4]
    texts = ["Chest pain and shortness of breath in a patient with diabetes.",
             "Oil prices rose as traders weighed new output cuts.",
             "A slow, beautiful film with a wonderful final act."]
    for base, group in by_base.items():
        emb = Embedder(base, device="cpu", dtype="float32",  # bf16: test_precision.py
                       max_length=artifact.read(group[0]).embedding.max_length)
        names = [emb.load(folder, name=folder.parent.name) for folder in group]
        every = emb.encode_all(texts)
        mixed = emb.encode(texts, adapter=[names[i % len(names)]
                                           for i in range(len(texts))]).vectors
        # the reference: plain PEFT for the first, its PEFT model holds the others too
        # (one more load of the base, not one per adapter: the GGUF takes ~15 s to load)
        config = model_config_of(group[0])
        reference = load_adapter(load_encoder(dataclasses.replace(
            config, max_length=emb.encoder.max_length)), group[0])
        for name, folder in zip(names, group, strict=True):
            if folder != group[0]:
                load_adapter(reference, folder, name=name)
            reference.model.set_adapter(name if folder != group[0] else "default")
            expected = reference.encode(texts, progress=False).numpy()
            cosine = (every[name] * expected).sum(1)
            assert cosine.min() > 0.99999, (name, cosine)
            for i in range(len(texts)):
                if names[i % len(names)] == name:
                    assert float(mixed[i] @ expected[i]) > 0.99999, (name, i)
        del emb


def test_one_result_type_whatever_is_asked(saved_models, artifacts):
    emb = embedder(saved_models)
    emb.load(artifacts["bert"]["lora2"])
    named, base = emb.encode(TEXTS, adapter="lora2"), emb.encode(TEXTS)
    assert type(named) is type(base) and named.routed is None and base.routed is None
    assert named.tokens.dtype == np.int64 and len(named) == len(TEXTS) == len(named.tokens)
    assert named.vectors.shape == base.vectors.shape == (len(TEXTS), emb.dim)
