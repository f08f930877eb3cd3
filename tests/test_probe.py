"""Layer probe on tiny models: per-layer embeddings, weight change, the top-k rule, artifacts."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MEDICAL, artifact_meta
from tiny import tiny_model, tiny_tokenizer

from lastlayer.config import AdapterConfig
from lastlayer.core.adapters import attach, save_adapter
from lastlayer.core.encoder import Encoder
from lastlayer.evaluation.probe import (
    MIN_TOP_K,
    format_probe,
    layer_embeddings,
    probe,
    recommend_top_k,
    weight_change_per_layer,
    write_probe,
)

TEXTS = [
    "Acute myocardial infarction in a young patient.",
    "A randomized trial of aspirin after stroke, with a long follow-up of many years.",
    "Tumor markers.",
    "Neonatal sepsis and its treatment in rural hospitals of three countries.",
    "Hip fracture surgery outcomes.",
]


def tiny_encoder(arch: str = "bert") -> Encoder:
    tokenizer = tiny_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.sep_token
    return Encoder(model=tiny_model(arch, num_layers=4), tokenizer=tokenizer, max_length=32)


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every trainable (adapter) weight, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_layer_embeddings_cover_every_layer_and_end_at_encode(arch):
    encoder = tiny_encoder(arch)
    layers = layer_embeddings(encoder, TEXTS, batch_size=2, progress=False)

    assert layers.shape == (4 + 1, len(TEXTS), 32) and layers.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(layers, axis=-1), 1.0, atol=1e-5)
    # The last layer is what Encoder.encode returns (mean pooling, normalised), row order kept.
    expected = encoder.encode(TEXTS, batch_size=3, progress=False).numpy()
    np.testing.assert_allclose(layers[-1], expected, atol=1e-5)
    assert not np.allclose(layers[0], layers[-1])


def test_llama_last_hidden_state_is_after_the_final_norm():
    """transformers ties hidden_states[-1] to last_hidden_state: after Llama's final RMSNorm."""
    model = tiny_model("llama", num_layers=2)
    captured = {}

    def keep(module, args, out):
        captured["block"] = out[0] if isinstance(out, tuple) else out

    model.layers[-1].register_forward_hook(keep)
    batch = tiny_tokenizer()(TEXTS[:1], return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    torch.testing.assert_close(out.hidden_states[-1], model.norm(captured["block"]))
    assert not torch.allclose(out.hidden_states[-1], captured["block"])


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_weight_change_is_zero_until_trained_and_only_on_trained_blocks(kind):
    encoder = attach(tiny_encoder(), AdapterConfig(kind=kind, top_k=2))

    assert weight_change_per_layer(encoder.model) == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}
    perturb(encoder.model)
    change = weight_change_per_layer(encoder.model)
    assert change[0] == change[1] == 0.0
    assert change[2] > 0 and change[3] > 0
    assert all(c < 1 for c in change.values())  # relative: a small move is a small number


def test_full_weight_change_is_relative_to_the_whole_block():
    encoder = attach(tiny_encoder(), AdapterConfig(kind="full", top_k=1))
    block = encoder.model.get_base_model().encoder.layer[3]
    copy = block.ln_tuning_layers["default"]
    weight = copy.output.dense.weight
    with torch.no_grad():
        weight.mul_(1.1)  # ΔW = 0.1 W on one matrix
    block_norm = math.sqrt(sum(float(p.pow(2).sum()) for p in block.base_layer.parameters()))
    expected = 0.1 * float(block.base_layer.output.dense.weight.norm()) / block_norm

    assert weight_change_per_layer(encoder.model)[3] == pytest.approx(expected, rel=1e-4)


def test_lora_weight_change_uses_the_delta_weight():
    encoder = attach(tiny_encoder(), AdapterConfig(kind="lora", top_k=1, target_modules=["query"]))
    perturb(encoder.model)
    query = encoder.model.get_base_model().encoder.layer[3].attention.self.query
    with torch.no_grad():
        delta = query.lora_B["default"].weight @ query.lora_A["default"].weight
        delta = delta * query.scaling["default"]
    base = encoder.model.get_base_model().encoder.layer[3]
    block_norm = math.sqrt(sum(
        float(p.pow(2).sum()) for n, p in base.named_parameters() if "lora_" not in n
    ))

    got = weight_change_per_layer(encoder.model)[3]
    assert got == pytest.approx(float(delta.norm()) / block_norm, rel=1e-4)


@pytest.mark.parametrize(
    ("curve", "n", "expected"),
    [
        ([0.30, 0.40, 0.50, 0.60, 0.70], 1000, (MIN_TOP_K, 4)),  # still rising at the top
        ([0.30, 0.60, 0.70, 0.55, 0.50], 1000, (3, 2)),  # peak at layer 2: train blocks 2..4
        ([0.30, 0.70, 0.60, 0.55, 0.50, 0.45, 0.40], 1000, (6, 1)),  # early peak: most layers
        ([0.30, 0.60, 0.695, 0.70, 0.69], 1000, (3, 2)),  # 0.695 is within noise of 0.70
        ([0.30, 0.60, 0.695, 0.70, 0.69], 10**7, (2, 3)),  # ... but not with 10M documents
        ([0.90, 0.50, 0.40], 1000, (2, 0)),  # embeddings best: k = L + 1, clipped to L
        ([0.40, 0.50], 100, (1, 1)),  # one layer: k cannot exceed L
    ],
)
def test_recommend_top_k_rule(curve, n, expected):
    assert recommend_top_k(curve, n) == expected


# ---------------------------------------------------------------------------------------
# End to end: an adapter artifact on a saved tiny BERT, and the base model alone.


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "medical.jsonl"
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as src:
        path.write_text("".join(next(src) for _ in range(80)), encoding="utf-8")
    return path


def make_artifact(base_folder: Path, out: Path, kind: str) -> Path:
    from lastlayer.config import ModelConfig
    from lastlayer.core.encoder import load_encoder

    encoder = load_encoder(ModelConfig(name_or_path=str(base_folder), max_length=32), "cpu")
    encoder = attach(encoder, AdapterConfig(kind=kind, top_k=2))
    perturb(encoder.model, seed=1)
    meta = artifact_meta(str(base_folder), kind=kind, top_k=2, num_layers=4, max_length=32)
    return save_adapter(encoder.model, out, files={"lastlayer.json": meta.to_json()})


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_probe_an_adapter_writes_json_and_png(saved_models, labelled, tmp_path, kind):
    artifact = make_artifact(saved_models["bert"], tmp_path / "adapter", kind)
    result = probe(artifact, labelled, max_docs=40, k=5, batch_size=16, progress=False)

    rows = result["layers"]
    assert [r["layer"] for r in rows] == [0, 1, 2, 3, 4] and result["num_layers"] == 4
    assert [r["trained"] for r in rows] == [False, False, False, True, True]
    assert result["adapter_kind"] == kind and result["num_documents"] == 40
    assert rows[0]["weight_change"] is None
    assert [r["weight_change"] > 0 for r in rows[1:]] == [False, False, True, True]
    for r in rows[:3]:  # below the adapter, adapted and base are the same model
        assert r["adapted_knn"] == r["base_knn"]
    assert all(0 <= r["base_knn"] <= 1 and 0 <= r["adapted_knn"] <= 1 for r in rows)
    assert 1 <= result["recommended_top_k"] <= 4 and "Heuristic" in result["rule"]
    assert result["best_layer"] == int(np.argmax([r["base_knn"] for r in rows]))

    # The base curve (adapter disabled) is the base model's own.
    alone = probe(saved_models["bert"], labelled, max_docs=40, k=5, max_length=32,
                  progress=False)
    assert [r["base_knn"] for r in alone["layers"]] == [r["base_knn"] for r in rows]
    assert alone["adapter"] is None and alone["trained_layers"] == []
    assert all(r["adapted_knn"] is None and r["weight_change"] is None for r in alone["layers"])

    json_path, png_path = write_probe(result, tmp_path / "probe")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 20_000
    table = format_probe(result)
    assert "Suggested top-k" in table and len(table.splitlines()) == 4 + 1 + 2
    _, base_png = write_probe(alone, tmp_path / "probe-base")
    assert base_png.stat().st_size > 20_000


def test_probe_cli_writes_json_and_png(saved_models, tmp_path, capsys):
    import gzip

    from conftest import MEDICAL

    from lastlayer.cli import main

    data = tmp_path / "labelled.jsonl"
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as src:
        data.write_text("".join(next(src) for _ in range(40)), encoding="utf-8")
    out = tmp_path / "probe"
    rc = main(["probe", str(saved_models["bert"]), "--data", str(data), "--max-docs", "30",
               "--k", "5", "--out", str(out)])
    assert rc == 0
    assert (out / "probe.json").is_file() and (out / "probe.png").stat().st_size > 10_000
    assert "Wrote" in capsys.readouterr().out
    assert main(["probe", str(saved_models["bert"])]) == 2  # no --data, not an artifact


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_the_engine_curve_equals_the_peft_models(saved_models, labelled, tmp_path, kind):
    """The probe's adapted layers (base up to block L−k, then the adapter's private blocks on
    the engine) and weight changes equal those of the plain PEFT model of the artifact."""
    from plain_peft import load_adapter

    from lastlayer.core.encoder import load_encoder
    from lastlayer.core.target import load_target, model_config_of
    from lastlayer.evaluation.probe import adapted_layer_embeddings, head_weight_change

    folder = make_artifact(saved_models["bert"], tmp_path / "adapter", kind)
    texts = [line for line in labelled.read_text(encoding="utf-8").splitlines()[:12]]
    target = load_target(folder)
    peft = load_adapter(load_encoder(model_config_of(folder), "cpu"), folder)
    ours = adapted_layer_embeddings(target, texts, batch_size=5, progress=False)
    theirs = layer_embeddings(peft, texts, batch_size=5, progress=False)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert head_weight_change(target) == weight_change_per_layer(peft.model)
