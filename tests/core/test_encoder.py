"""Tests for lastlayer.core.encoder: pooling, Encoder.encode, fingerprints, loading (the
resolver's tests are in test_resolve.py).

Every model is a tiny one built in code (helpers/tiny.py); the Hub is never contacted
(offline mode and an empty cache, see ``hub_offline``).
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_model, tiny_tokenizer

from lastlayer.config import ModelConfig
from lastlayer.core.encoder import (
    Encoder,
    cls_pool,
    last_pool,
    load_encoder,
    mean_pool,
    quantization_config,
    weights_fingerprint,
)

TEXTS = [
    "Asthma.",
    "Obstructive sleep apnea in loud snorers is common and often undiagnosed.",
    "The patient had a cough.",
    "Fever",
    "Chronic kidney disease progresses slowly over many years in most adults.",
    "A short note on the heart.",
    "Blood pressure",
]




# ---------------------------------------------------------------------------------------
# Pooling


def _states() -> torch.Tensor:
    """(B=2, T=3, d=2) token states with distinct, easy values."""
    return torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0], [100.0, 200.0]],
            [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]],
        ]
    )


def test_mean_pool_ignores_padding() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.tensor([[2.0, 3.0], [7.0, 8.0]])
    assert torch.equal(mean_pool(_states(), mask), expected)


def test_mean_pool_left_padding_and_empty_row() -> None:
    mask = torch.tensor([[0, 0, 1], [0, 0, 0]])
    out = mean_pool(_states(), mask)
    assert torch.equal(out[0], torch.tensor([100.0, 200.0]))
    assert torch.equal(out[1], torch.zeros(2))  # an all-padding row gives 0, not NaN


def test_cls_pool_takes_first_token() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(cls_pool(_states(), mask), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))


def test_last_pool_right_padding() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(last_pool(_states(), mask), torch.tensor([[3.0, 4.0], [5.0, 6.0]]))
    full = torch.tensor([[1, 1, 1], [1, 1, 1]])
    assert torch.equal(last_pool(_states(), full), torch.tensor([[100.0, 200.0], [9.0, 10.0]]))


def test_last_pool_left_padding() -> None:
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert torch.equal(last_pool(_states(), mask), torch.tensor([[100.0, 200.0], [9.0, 10.0]]))
    bool_mask = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(last_pool(_states(), bool_mask), last_pool(_states(), mask))


# ---------------------------------------------------------------------------------------
# Encoder.encode


@pytest.fixture(scope="module")
def tiny_encoders() -> dict[str, Encoder]:
    """A mean-pooled tiny BERT and a last-token-pooled tiny Llama."""
    return {
        "bert": Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer(), pooling="mean"),
        "llama": Encoder(model=tiny_model("llama"), tokenizer=tiny_tokenizer(), pooling="last"),
    }


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_encode_keeps_input_order(tiny_encoders: dict[str, Encoder], arch: str) -> None:
    enc = tiny_encoders[arch]
    out = enc.encode(TEXTS, batch_size=3, progress=False)
    assert out.shape == (len(TEXTS), 32)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    with torch.no_grad():
        one_by_one = torch.cat([enc.embed(enc.tokenize([t])) for t in TEXTS])
    torch.testing.assert_close(out, one_by_one, atol=1e-5, rtol=0)
    # The rows differ from each other, so any permutation of them would have been caught.
    dist = torch.cdist(out, out) + torch.eye(len(TEXTS))
    assert dist.min() > 1e-3


def test_encode_normalize(tiny_encoders: dict[str, Encoder]) -> None:
    enc = tiny_encoders["bert"]
    norms = enc.encode(TEXTS, progress=False).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    raw = Encoder(model=enc.model, tokenizer=enc.tokenizer, pooling="mean", normalize=False)
    raw_norms = raw.encode(TEXTS, progress=False).norm(dim=-1)
    assert (raw_norms - 1).abs().max() > 1e-2


@pytest.mark.parametrize("start_training", [True, False])
def test_encode_runs_in_eval_and_restores_mode(start_training: bool) -> None:
    enc = Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer())
    enc.model.train(start_training)
    seen: list[bool] = []
    hook = enc.model.register_forward_hook(lambda m, args, out: seen.append(m.training))
    try:
        enc.encode(TEXTS, batch_size=4, progress=False)
    finally:
        hook.remove()
    assert seen == [False, False]  # two batches, both in eval mode
    assert enc.model.training is start_training
    assert all(m.training is start_training for m in enc.model.modules())


def test_encode_restores_mode_when_forward_fails() -> None:
    enc = Encoder(model=tiny_model("bert"), tokenizer=tiny_tokenizer())
    enc.model.train()

    def boom(module, args, out):
        raise RuntimeError("boom")

    hook = enc.model.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            enc.encode(TEXTS, progress=False)
    finally:
        hook.remove()
    assert enc.model.training


def test_encode_empty_list(tiny_encoders: dict[str, Encoder]) -> None:
    enc = tiny_encoders["bert"]
    calls: list[int] = []
    hook = enc.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = enc.encode([], progress=False)
    finally:
        hook.remove()
    assert isinstance(out, torch.Tensor) and out.shape[0] == 0
    assert calls == []


# ---------------------------------------------------------------------------------------
# weights_fingerprint, quantization_config


def test_weights_fingerprint() -> None:
    a, b = tiny_model("bert", seed=0), tiny_model("bert", seed=0)
    fa = weights_fingerprint(a)
    assert len(fa) == 16 and int(fa, 16) >= 0
    assert weights_fingerprint(b) == fa
    assert weights_fingerprint(a) == fa  # stable across calls
    with torch.no_grad():
        b.encoder.layer[3].output.dense.weight[0, 0] += 1e-3
    assert weights_fingerprint(b) != fa
    assert weights_fingerprint(tiny_model("bert", seed=1)) != fa
    assert weights_fingerprint(tiny_model("llama", seed=0)) != fa


def test_quantization_config() -> None:
    assert quantization_config(None, torch.float32) is None
    eight = quantization_config("8bit", torch.float32)
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = quantization_config("4bit", torch.bfloat16)
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_compute_dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------
# load_encoder


def test_load_encoder_local_bert(saved_models: dict) -> None:
    cfg = ModelConfig(name_or_path=str(saved_models["bert"]), pooling="cls", max_length=16)
    enc = load_encoder(cfg, device="cpu")
    assert not enc.model.training
    assert all(not m.training for m in enc.model.modules())
    params = list(enc.model.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert enc.tokenizer.padding_side == "right"
    assert enc.tokenizer.pad_token is not None
    assert (enc.pooling, enc.normalize, enc.max_length) == ("cls", True, 16)
    assert enc.resolved is not None and enc.resolved.hub_id == "tiny-bert"
    assert enc.device.type == "cpu"
    assert enc.model.dtype == torch.float32
    assert enc.fingerprint == weights_fingerprint(tiny_model("bert"))
    # It embeds like the model it was saved from.
    reference = Encoder(
        model=tiny_model("bert"), tokenizer=tiny_tokenizer(), pooling="cls", max_length=16
    )
    torch.testing.assert_close(
        enc.encode(TEXTS[:3], progress=False),
        reference.encode(TEXTS[:3], progress=False),
        atol=1e-5, rtol=0,
    )
    batch = enc.tokenize(["a b c d e f g h i j k l m n o p q r s t u v w x y z", "a"])
    assert batch["input_ids"].shape[1] == 16  # truncated to max_length
    assert "token_type_ids" not in batch
    assert batch["attention_mask"][1, 0] == 1 and batch["attention_mask"][1, -1] == 0
