"""Routing signatures: the math on synthetic domains, the file, training, shipped artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.artifacts import shipped_artifacts
from helpers.data import medical_sample
from safetensors.numpy import load_file, save_file

from lastlayer import artifact
from lastlayer.artifact import ROUTING, ArtifactError
from lastlayer.config import ModelConfig, load_recipe
from lastlayer.core.encoder import load_encoder, mean_pool
from lastlayer.core.routing import (
    RoutingSignature,
    assign,
    read_signature,
    sample_indices,
    signature_for_texts,
    signature_from_states,
    write_signature,
)
from lastlayer.core.split import pooled_block_inputs
from lastlayer.evaluation.datasets import load_eval_set
from lastlayer.training.data import training_documents
from lastlayer.training.run import run

D = 24


def domain(center: float, n: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """``n`` points of a synthetic domain: Gaussian around ``center`` on the first half of
    the dimensions, with one huge shared outlier dimension as decoders have."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, spread, (n, D))
    x[:, : D // 2] += center
    x[:, -1] += 800.0  # large in every text: must not decide the domain
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def two_domains() -> dict[str, RoutingSignature]:
    return {"a": signature_from_states(domain(4.0, 400, 0), layer=3, seed=0),
            "b": signature_from_states(domain(-4.0, 400, 1), layer=3, seed=0)}


# ---------------------------------------------------------------------------------------
# The math.


def test_assign_separates_domains_and_sends_far_texts_to_the_base(two_domains):
    a, b = domain(4.0, 100, 10), domain(-4.0, 100, 11)
    far = domain(0.0, 50, 12) + np.float32(30.0) * np.eye(D, dtype=np.float32)[D - 2]
    routed = assign(two_domains, {3: np.concatenate([a, b, far])})
    assert len(routed) == 250
    assert routed[:100].count("a") >= 85 and "b" not in routed[:100]
    assert routed[100:200].count("b") >= 85 and "a" not in routed[100:200]
    assert routed[200:] == [None] * 50


def test_assign_passes_over_a_domain_whose_threshold_fails():
    """The most similar domain is only chosen when the text passes its threshold; a text
    that passes only another domain's goes there, and one passing none to the base."""
    wide = signature_from_states(domain(0.0, 400, 0, spread=3.0), layer=1)
    tight = signature_from_states(domain(0.0, 400, 1, spread=0.5), layer=1)
    outside_tight = domain(0.0, 40, 2, spread=2.0)  # far for "tight", usual for "wide"
    assert (tight.similarity(outside_tight) < tight.threshold).all()
    assert assign({"tight": tight, "wide": wide}, {1: outside_tight}) == ["wide"] * 40
    assert assign({"tight": tight}, {1: outside_tight}) == [None] * 40


def test_assign_reads_each_signature_at_its_own_layer(two_domains):
    other_layer = signature_from_states(domain(0.0, 300, 5), layer=5)
    texts = domain(-4.0, 20, 6)
    pooled = {3: texts, 5: domain(30.0, 20, 7)}  # block 5's states are far from "c"
    routed = assign({**two_domains, "c": other_layer}, pooled)
    assert routed.count("b") >= 18 and "c" not in routed
    with pytest.raises(ValueError, match=r"block\(s\) \[5\]"):
        assign({"c": other_layer}, {3: texts})
    assert assign({}, {3: texts}) == [None] * 20


def test_threshold_lets_the_chosen_share_of_unseen_domain_texts_fall_below(two_domains):
    """The threshold is calibrated on documents left out of the fit: about ``quantile`` of
    *new* texts of the domain fall below it (fitted documents sit closer to their own
    centroids, so calibrating on them would reject far more new texts)."""
    for quantile in (0.05, 0.2):
        sig = signature_from_states(domain(4.0, 2000, 0), layer=3, quantile=quantile, seed=1)
        new = domain(4.0, 4000, 99)
        below = (sig.similarity(new) < sig.threshold).mean()
        assert below == pytest.approx(quantile, abs=0.04)
        assert np.median(sig.similarity(new)) == pytest.approx(1.0, abs=0.05)  # "typical"
    default = two_domains["a"]
    assert default.quantile == 0.05 and default.num_documents == 400 and default.layer == 3
    assert len(default.centroids) == 16 and default.centroids.dtype == np.float32


def test_few_documents_get_few_centroids_and_too_few_are_refused():
    sig = signature_from_states(domain(0.0, 40, 0), layer=0)
    assert len(sig.centroids) == 3  # 30 fitted documents: one centroid per 8
    with pytest.raises(ValueError, match="at least 4"):
        signature_from_states(domain(0.0, 3, 0), layer=0)
    with pytest.raises(ValueError, match="shape"):
        sig.similarity(np.zeros((2, D + 1), np.float32))


def test_signature_is_deterministic_at_a_fixed_seed():
    x = domain(1.0, 300, 3)
    one, two = signature_from_states(x, 2, seed=7), signature_from_states(x, 2, seed=7)
    np.testing.assert_array_equal(one.centroids, two.centroids)
    assert one.threshold == two.threshold
    assert signature_from_states(x, 2, seed=8).threshold != one.threshold


def test_sample_indices():
    rows = sample_indices(100, 10, seed=0)
    assert len(set(rows)) == 10 and list(rows) == sorted(rows) and rows.max() < 100
    np.testing.assert_array_equal(rows, sample_indices(100, 10, seed=0))
    np.testing.assert_array_equal(sample_indices(5, 10, seed=0), np.arange(5))


# ---------------------------------------------------------------------------------------
# The file.


def test_signature_round_trip_through_safetensors(two_domains, tmp_path):
    sig = two_domains["a"]
    path = write_signature(tmp_path, sig)
    assert path == tmp_path / ROUTING and not list(tmp_path.glob(".*"))
    back = read_signature(tmp_path)
    for name in ("centroids", "mean", "scale"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sig, name))
        assert getattr(back, name).dtype == np.float32
    for name in ("layer", "threshold", "typical_distance", "num_documents", "quantile",
                 "metric"):
        assert getattr(back, name) == getattr(sig, name), name
    texts = domain(4.0, 10, 3)
    np.testing.assert_array_equal(back.similarity(texts), sig.similarity(texts))
    assert read_signature(tmp_path / "nothing-here") is None
    # plain safetensors: tensors and string metadata, nothing pickled
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"]["format"] == "lastlayer-routing/1"


def _rewrite(path: Path, tensors: dict | None = None, **metadata: str) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = {**f.metadata(), **metadata}
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), meta)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "truncated or corrupt"),
    (lambda p: _rewrite(p, threshold="high"), "threshold is missing or not a number"),
    (lambda p: _rewrite(p, metric="cosine"), "unknown similarity 'cosine'"),
    (lambda p: _rewrite(p, format="other/9"), "not a routing signature"),
    (lambda p: _rewrite(p, typical_distance="0.0"), "out of range"),
    (lambda p: _rewrite(p, {**load_file(str(p)), "scale": np.ones(3, np.float32)}),
     "inconsistent shapes"),
    (lambda p: _rewrite(p, {**load_file(str(p)), "mean": np.full(D, np.nan, np.float32)}),
     "finite float32"),
])
def test_read_routing_refuses_damaged_files(two_domains, tmp_path, damage, message):
    path = write_signature(tmp_path, two_domains["a"])
    damage(path)
    with pytest.raises(ArtifactError, match=message):
        artifact.read_routing(tmp_path)
    with pytest.raises(ArtifactError, match=message):
        read_signature(tmp_path)


# ---------------------------------------------------------------------------------------
# The states: block L-k's inputs, mean-pooled.


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_pooled_block_inputs_are_the_hidden_states_entering_block_l_minus_k(saved_models, arch):
    encoder = load_encoder(ModelConfig(name_or_path=str(saved_models[arch]), max_length=24))
    texts = ["a short one", "a somewhat longer text about the heart and lungs " * 3, "x"]
    pooled = pooled_block_inputs(encoder, texts, k=1, batch_size=2, progress=False)
    batch = encoder.tokenize(texts)
    with torch.inference_mode():
        states = encoder.model(**batch, output_hidden_states=True).hidden_states[4 - 1]
    expected = mean_pool(states, batch["attention_mask"]).numpy()
    assert pooled.shape == (3, encoder.model.config.hidden_size) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Training writes the signature into the artifact; artifact.read validates it.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return medical_sample(tmp_path_factory.mktemp("data") / "medical.jsonl", docs=120)


def _recipe(model: Path, corpus: Path, out: Path, *overrides: str):
    return load_recipe(None, [
        f"model.name_or_path={model}", "model.max_length=32", f"data.train={corpus}",
        f"eval.data={corpus}", "eval.max_docs=40", "eval.k=5", "adapter.top_k=2",
        "train.max_steps=2", "train.batch_size=8", "train.cpu=true", "seed=0",
        f"output_dir={out}", *overrides,
    ])


@pytest.fixture(scope="module")
def trained(saved_models, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adapters") / "tiny"
    run(_recipe(saved_models["llama"], corpus, out, "train.routing_docs=50"))
    return out


def test_training_writes_the_base_bottoms_signature_of_its_documents(
        trained, saved_models, corpus):
    sig = read_signature(trained)
    assert sig is not None and sig.layer == 2 and sig.num_documents == 50  # top 2 of 4
    assert artifact.read(trained).name == "tiny"
    # the same signature, computed afresh from the base model (the adapter leaves the
    # bottom blocks alone) on the same seeded sample of the training documents
    recipe = _recipe(saved_models["llama"], corpus, trained)
    docs = training_documents(recipe, load_eval_set(recipe.eval, recipe.seed))
    base = load_encoder(recipe.model)
    again = signature_for_texts(base, docs, k=2, max_docs=50, seed=0, progress=False)
    np.testing.assert_allclose(again.centroids, sig.centroids, rtol=1e-4, atol=1e-4)
    assert again.threshold == pytest.approx(sig.threshold, rel=1e-4)
    # training documents route to their own adapter, and not every one to the base
    pooled = pooled_block_inputs(base, docs[:40], k=2, progress=False)
    assert assign({"tiny": sig}, {2: pooled}).count("tiny") >= 30


def test_artifact_read_validates_the_signature(trained, tmp_path):
    import shutil

    copy = shutil.copytree(trained, tmp_path / "copy")
    (copy / ROUTING).write_bytes((copy / ROUTING).read_bytes()[:100])
    with pytest.raises(ArtifactError, match="routing.safetensors: truncated or corrupt"):
        artifact.read(copy)
    sig = read_signature(trained)
    wrong = RoutingSignature(**{**vars(sig), "layer": 1})
    write_signature(copy, wrong)
    with pytest.raises(ArtifactError, match="inputs of block 1, but the adapter starts at "
                                            "block 2"):
        artifact.read(copy)
    (copy / ROUTING).unlink()
    assert artifact.read(copy).name == "tiny"  # no signature is fine: older artifacts
    assert read_signature(copy) is None


def test_sign_artifact_writes_what_training_wrote(trained, saved_models, tmp_path):
    import shutil

    from lastlayer.training.sign import sign_artifact

    copy = shutil.copytree(trained, tmp_path / "copy")
    (copy / ROUTING).unlink()
    base = load_encoder(ModelConfig(name_or_path=str(saved_models["llama"]), max_length=32))
    made = sign_artifact(copy, encoder=base, max_docs=50, progress=False)
    back, original = read_signature(copy), read_signature(trained)
    np.testing.assert_allclose(back.centroids, original.centroids, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(back.centroids, made.centroids)
    assert back.num_documents == 50 and back.threshold == pytest.approx(original.threshold, 1e-4)
    assert (copy / "adapter_model.safetensors").read_bytes() == \
        (trained / "adapter_model.safetensors").read_bytes()


def test_routing_docs_zero_writes_no_signature(saved_models, corpus, tmp_path):
    out = tmp_path / "none"
    run(_recipe(saved_models["bert"], corpus, out, "train.routing_docs=0", "eval.data=null"))
    assert artifact.is_artifact(out) and not (out / ROUTING).exists()


# ---------------------------------------------------------------------------------------
# The shipped artifacts.


@pytest.mark.parametrize("folder", shipped_artifacts(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_artifacts_have_signatures(folder):
    meta = artifact.read(folder)  # validates routing.safetensors too
    sig = read_signature(folder)
    assert sig is not None, f"{folder} has no {ROUTING}"
    assert sig.layer == meta.layers.num_layers - meta.top_k
    assert sig.dim == {"sentence-transformers/all-MiniLM-L6-v2": 384,
                       "HuggingFaceTB/SmolLM2-135M-Instruct": 576}[meta.base.model]
    assert sig.num_documents >= 300 and len(sig.centroids) == 16
