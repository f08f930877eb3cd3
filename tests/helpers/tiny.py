"""Tiny real transformers models, built in code, for the test suite (no downloads).

Every model has hidden size 32, 2 heads, FFN size 64, the vocab of the committed
tokenizer in ``tests/helpers/fixtures/tiny_tokenizer/`` and deterministic weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import transformers as tf
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

TOKENIZER_DIR = Path(__file__).resolve().parent / "fixtures" / "tiny_tokenizer"
HIDDEN, HEADS, FFN, MAX_POSITIONS = 32, 2, 64, 130


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Load a fresh copy of the committed WordPiece tokenizer (vocab ~1000, max length 128)."""
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _special_ids() -> dict[str, int]:
    """Return the tokenizer's vocab size and special-token ids as config kwargs."""
    tok = tiny_tokenizer()
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}


def _bert_like(config_cls: type, model_cls: type) -> Callable[[int], PreTrainedModel]:
    """Return a builder for a BERT-shaped encoder (BERT, MPNet, RoBERTa, XLM-R)."""

    def build(num_layers: int) -> PreTrainedModel:
        config = config_cls(
            hidden_size=HIDDEN,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            num_hidden_layers=num_layers,
            max_position_embeddings=MAX_POSITIONS,
            **_special_ids(),
        )
        return model_cls(config)

    return build


def _distilbert(num_layers: int) -> PreTrainedModel:
    """Build a tiny ``DistilBertModel`` (its config uses dim / n_heads / n_layers)."""
    config = tf.DistilBertConfig(
        dim=HIDDEN,
        n_heads=HEADS,
        hidden_dim=FFN,
        n_layers=num_layers,
        max_position_embeddings=MAX_POSITIONS,
        **_special_ids(),
    )
    return tf.DistilBertModel(config)


def _modernbert(num_layers: int) -> PreTrainedModel:
    """Build a tiny ``ModernBertModel`` with the tokenizer's CLS / SEP ids."""
    tok = tiny_tokenizer()
    config = tf.ModernBertConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        num_hidden_layers=num_layers,
        max_position_embeddings=MAX_POSITIONS,
        cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        **_special_ids(),
    )
    return tf.ModernBertModel(config)


def _llama(num_layers: int) -> PreTrainedModel:
    """Build a tiny decoder-only ``LlamaModel`` with a pad token set."""
    tok = tiny_tokenizer()
    config = tf.LlamaConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        intermediate_size=FFN,
        num_hidden_layers=num_layers,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        **_special_ids(),
    )
    return tf.LlamaModel(config)


ARCHITECTURES: dict[str, Callable[..., PreTrainedModel]] = {
    "bert": _bert_like(tf.BertConfig, tf.BertModel),
    "mpnet": _bert_like(tf.MPNetConfig, tf.MPNetModel),
    "roberta": _bert_like(tf.RobertaConfig, tf.RobertaModel),
    "distilbert": _distilbert,
    "xlm-roberta": _bert_like(tf.XLMRobertaConfig, tf.XLMRobertaModel),
    "modernbert": _modernbert,
    "llama": _llama,
}
"""Architecture name -> builder taking ``num_layers``."""

EXPECTED_PREFIX: dict[str, str] = {
    "bert": "encoder.layer",
    "mpnet": "encoder.layer",
    "roberta": "encoder.layer",
    "distilbert": "transformer.layer",
    "xlm-roberta": "encoder.layer",
    "modernbert": "layers",
    "llama": "layers",
}
"""Architecture name -> dotted name of its block ``nn.ModuleList``."""


def tiny_model(arch: str, num_layers: int = 4, seed: int = 0) -> PreTrainedModel:
    """Build a tiny base model (like ``AutoModel``) with deterministic weights.

    Args:
        arch: A key of ``ARCHITECTURES``.
        num_layers: Number of transformer blocks.
        seed: Seed for ``torch.manual_seed`` before construction.

    Returns:
        The model in ``eval()`` mode.

    Raises:
        KeyError: If ``arch`` is unknown.
    """
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    torch.manual_seed(seed)
    return ARCHITECTURES[arch](num_layers).eval()
