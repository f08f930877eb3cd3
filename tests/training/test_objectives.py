"""Views, the objectives registry, enable_/disable_dropout and info_nce: deterministic, on
real abstracts and tiny tensors."""

from __future__ import annotations

import gzip
import inspect
import json
import math
import random
import typing

import pytest
import torch
import torch.nn.functional as F
from helpers.data import ROOT

from lastlayer.config import AdapterConfig, DataConfig, ObjectiveConfig, ObjectiveKind, Recipe
from lastlayer.training.loss import info_nce
from lastlayer.training.objectives import (
    OBJECTIVES,
    disable_dropout,
    enable_dropout,
    make_views,
    objective_for,
)
from lastlayer.training.views import (
    ViewStats,
    crop_views,
    dropout_views,
    span_views,
    split_sentences,
)

MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"


@pytest.fixture(scope="module")
def abstracts() -> list[str]:
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(300), f, strict=False)]


def _long_doc(n: int = 8) -> str:
    # n sentences of ~120 characters each: n units at the default bounds.
    return " ".join(
        f"Sentence number {i} talks about topic {i} in some detail, "
        f"long enough to stand alone as one unit of about one hundred "
        f"and twenty chars."
        for i in range(n)
    )


# ------------------------------------------------------------------------ split_sentences


def test_split_sentences_basic_rule():
    s1 = "A" * 120 + "."
    s2 = "B" * 120 + "!"
    s3 = "C" * 120 + "?"
    assert split_sentences(f"{s1} {s2}\n\n{s3}") == [s1, s2, s3]
    # no split: lowercase next word, or no whitespace after the period
    text = "x" * 120 + ". and more" + " y" * 60
    assert len(split_sentences(text)) == 1
    # splits before digits, quotes and brackets
    for start in ("7 patients", '"Quoted', "(Bracketed"):
        assert len(split_sentences("z" * 120 + ". " + start + " w" * 60)) == 2


def test_short_sentences_are_merged_with_following():
    text = "Short one. Another short one! A third? " + "D" * 110 + "."
    units = split_sentences(text)
    assert units == [text]  # everything merged until >= 100 chars
    tail = "E" * 120 + ". Tiny tail."
    assert split_sentences(tail) == [tail]  # short tail joins the previous unit


def test_long_units_cut_at_word_boundaries_evenly():
    text = " ".join(["word"] * 100)  # 499 chars, no sentence end
    units = split_sentences(text)
    assert [len(u) for u in units] == [249, 249]
    assert all(u.split() == ["word"] * 50 for u in units)
    # one unbreakable "word" longer than max_chars is cut hard
    units = split_sentences("x" * 600)
    assert [len(u) for u in units] == [250, 250, 100]


def test_split_sentences_empty_and_bad_bounds():
    assert split_sentences("") == []
    assert split_sentences("  \n ") == []
    with pytest.raises(ValueError, match="min_chars <= max_chars"):
        split_sentences("abc", min_chars=300, max_chars=250)


def test_split_sentences_on_real_abstracts(abstracts):
    lengths = []
    for doc in abstracts:
        units = split_sentences(doc)
        assert units and all(u in doc and u == u.strip() for u in units)
        # units cover the document in order: re-joined with spaces they give its words
        assert " ".join(units).split() == doc.split()
        lengths += [len(u) for u in units]
    assert max(lengths) <= 250
    in_bounds = sum(100 <= n <= 250 for n in lengths) / len(lengths)
    assert in_bounds > 0.99


# ----------------------------------------------------------------------------- crop views


def _units_joined(doc: str, view: str, k: int) -> bool:
    """Is ``view`` k consecutive units of ``doc`` (sliced from the document)?"""
    units = split_sentences(doc)
    for i in range(len(units) - k + 1):
        start = doc.index(units[i])
        if view == doc[start : doc.index(units[i + k - 1], start) + len(units[i + k - 1])]:
            return True
    return False


def test_crop_views_are_consecutive_units(abstracts):
    rng = random.Random(0)
    stats = ViewStats()
    for doc in abstracts[:100]:
        a, b = crop_views(doc, rng, stats=stats)
        assert a in doc and b in doc
        if len(split_sentences(doc)) >= 3:
            assert _units_joined(doc, a, 2) and _units_joined(doc, b, 2)
    assert stats.documents == 100
    assert stats.sentence_crops + stats.token_span_fallbacks == 100
    assert stats.sentence_crops > 90


def test_crop_views_differ_and_are_deterministic():
    doc = _long_doc(8)
    a, b = crop_views(doc, random.Random(1))
    assert a != b
    assert (a, b) == crop_views(doc, random.Random(1))
    assert _units_joined(doc, a, 2) and _units_joined(doc, b, 2)
    # independent crops: over many draws they mostly differ, and cover several starts
    rng = random.Random(2)
    pairs = [crop_views(doc, rng) for _ in range(200)]
    same = sum(a == b for a, b in pairs) / len(pairs)
    assert 0.05 < same < 0.3  # expected 1/7
    assert len({a for a, _ in pairs}) == 7
    # three units per crop
    a3, _ = crop_views(doc, random.Random(0), sentences_per_crop=3)
    assert _units_joined(doc, a3, 3)


def test_crop_short_doc_falls_back_to_word_spans():
    doc = _long_doc(2)  # 2 units: only one possible 2-unit crop
    stats = ViewStats()
    a, b = crop_views(doc, random.Random(0), stats=stats)
    assert stats == ViewStats(documents=1, token_span_fallbacks=1)
    assert a in doc and b in doc
    assert a != b
    n_words = len(doc.split())
    assert 1 <= len(a.split()) <= 0.5 * n_words
    # the fallback draws exactly what span_views draws from the same rng state
    assert (a, b) == span_views(doc, random.Random(0))
    # 3 units are enough for a sentence crop
    stats = ViewStats()
    crop_views(_long_doc(3), random.Random(0), stats=stats)
    assert stats.sentence_crops == 1 and stats.token_span_fallbacks == 0
    # a one-word doc still gives views
    assert crop_views("word", random.Random(0)) == ("word", "word")


# ----------------------------------------------------------------------------- span views


def test_span_view_ratios_within_bounds(abstracts):
    rng = random.Random(0)
    for doc in abstracts[:50]:
        n = min(len(doc.split()), 256)
        for view in span_views(doc, rng):
            assert view in doc
            k = len(view.split())
            assert max(1, int(0.1 * n)) <= k <= int(0.5 * n)


def test_span_views_max_words_and_determinism():
    doc = " ".join(f"w{i}" for i in range(1000))
    rng = random.Random(3)
    for _ in range(50):
        for view in span_views(doc, rng, min_ratio=0.2, max_ratio=0.3, max_words=100):
            words = view.split()
            assert 20 <= len(words) <= 30
            assert int(words[-1][1:]) < 100  # only the first 100 words are used
    assert span_views(doc, random.Random(5)) == span_views(doc, random.Random(5))
    with pytest.raises(ValueError, match="min_ratio"):
        span_views(doc, random.Random(0), min_ratio=0.6, max_ratio=0.5)


# -------------------------------------------------------------------------- dropout views


def test_dropout_views_identical_text(abstracts):
    rng = random.Random(0)
    stats = ViewStats()
    for doc in abstracts[:50]:
        a, b = dropout_views(doc, rng, stats=stats)
        assert a == b and a in doc
    assert stats.documents == 50 and stats.token_span_fallbacks == 0
    doc = _long_doc(8)
    a, _ = dropout_views(doc, random.Random(0))
    assert _units_joined(doc, a, 2)


def test_dropout_short_doc_uses_start_of_doc():
    stats = ViewStats()
    doc = "One single short sentence only."
    assert dropout_views(doc, random.Random(0), stats=stats) == (doc, doc)
    assert stats.whole_doc_fallbacks == 1 and stats.sentence_crops == 0
    # a one-unit doc longer than max_chars * sentences_per_crop cannot exist (units are cut
    # to max_chars), so the cap shows with sentences_per_crop > units
    doc = _long_doc(2)
    a, _ = dropout_views(doc, random.Random(0), sentences_per_crop=3, max_chars=150)
    assert doc.startswith(a) and len(a) <= 450


# ----------------------------------------------------------------------------- make_views


def test_make_views_registry_and_empty_docs(abstracts):
    docs = [abstracts[0], "", "   ", abstracts[1]]
    for kind in OBJECTIVES:
        a, b, stats = make_views(kind, docs, random.Random(0))
        assert len(a) == len(b) == 2
        assert stats.dropped_empty == 2 and stats.documents == 2
    a1 = make_views("crop", abstracts[:20], random.Random(9))
    a2 = make_views("crop", abstracts[:20], random.Random(9))
    assert a1 == a2
    _, _, stats = make_views("crop", abstracts[:5], random.Random(0), sentences_per_crop=1)
    assert stats.sentence_crops == 5
    with pytest.raises(
        ValueError, match=r"unknown view kind 'mask'.*\['crop', 'dropout', 'span'\]"
    ):
        make_views("mask", docs, random.Random(0))
    with pytest.raises(ValueError, match="empty document"):
        crop_views("  ", random.Random(0))


# ----------------------------------------------------------------------------- objectives


def test_registry_is_the_recipes_menu():
    """One objective per ``objective.kind`` the recipe accepts, and no other."""
    assert list(OBJECTIVES) == list(typing.get_args(ObjectiveKind))
    for kind, objective in OBJECTIVES.items():
        assert objective.kind == kind and objective_for(ObjectiveConfig(kind=kind)) is objective


@pytest.mark.parametrize("kind", typing.get_args(ObjectiveKind))
def test_view_kwargs_are_the_makers_and_follow_the_recipe(kind, abstracts):
    objective = OBJECTIVES[kind]
    cfg = ObjectiveConfig(kind=kind, sentences_per_crop=1, min_sentence_chars=50,
                          max_sentence_chars=120, span_min_ratio=0.2, span_max_ratio=0.2)
    kwargs = objective.view_kwargs(cfg)
    inspect.signature(objective.view_maker).bind("doc", random.Random(0), **kwargs)
    doc = abstracts[3]
    a, b = objective.view_maker(doc, random.Random(0), **kwargs)
    if kind == "span":  # 20 % of the words, exactly
        assert len(a.split()) == len(b.split()) == int(len(doc.split()[:256]) * 0.2)
    else:  # one sentence unit of at most 120 characters
        assert a in split_sentences(doc, 50, 120)


@pytest.mark.parametrize("kind", typing.get_args(ObjectiveKind))
def test_same_text_says_what_the_views_are(kind, abstracts):
    """The cache trusts ``same_text`` to store one set of states: it must be the truth."""
    objective = OBJECTIVES[kind]
    kwargs = objective.view_kwargs(ObjectiveConfig(kind=kind))
    rng = random.Random(0)
    pairs = [objective.view_maker(doc, rng, **kwargs) for doc in abstracts[:50]]
    identical = sum(a == b for a, b in pairs)
    if objective.same_text:
        assert identical == 50  # one text twice, every time
        return
    assert identical < 25  # two draws: most pairs differ (two crops may coincide by chance)
    for doc in abstracts[:50]:  # and every document can give two different views
        draws = [objective.view_maker(doc, rng, **kwargs) for _ in range(20)]
        assert any(a != b for a, b in draws), doc


def _attach(model, objective: str, *overrides):
    from helpers.tiny import tiny_tokenizer

    from lastlayer.core.encoder import Encoder
    from lastlayer.training.attach import attach_for_training

    recipe = Recipe(adapter=AdapterConfig(top_k=1, dropout=0.2),
                    objective=ObjectiveConfig(kind=objective, **dict(overrides)),
                    data=DataConfig(train="unused"), output_dir="unused")
    encoder = Encoder(model, tiny_tokenizer(), pooling="mean")
    messages = attach_for_training(encoder, recipe)
    rates = {name: m.p for name, m in encoder.model.named_modules()
             if isinstance(m, torch.nn.Dropout)}
    rates |= {f"{name}.attention_dropout": m.attention_dropout
              for name, m in encoder.model.named_modules() if hasattr(m, "attention_dropout")}
    return messages, rates


def test_crop_without_model_dropout_keeps_the_adapters_dropout():
    from helpers.tiny import tiny_model

    messages, rates = _attach(tiny_model("bert", num_layers=2), "crop", ("model_dropout", False))
    assert messages == ["objective.model_dropout=false: switched dropout off in 7 places."]
    lora = {name: p for name, p in rates.items() if "lora_dropout" in name}
    assert lora and set(lora.values()) == {0.2}  # switched off before the adapter went on
    assert {p for name, p in rates.items() if name not in lora} == {0.0}
    # kept on: nothing switched
    messages, rates = _attach(tiny_model("bert", num_layers=2), "span")
    assert messages == [] and 0.1 in rates.values()


def test_dropout_objective_switches_dropout_on_after_the_adapter():
    from helpers.tiny import tiny_model

    messages, rates = _attach(tiny_model("llama", num_layers=2), "dropout", ("dropout", 0.3))
    # each layer's attention_dropout (module and config: 3 places), LoRA dropout kept
    assert messages == ["Dropout objective: switched dropout on in 3 places."]
    attention = {p for name, p in rates.items() if name.endswith(".attention_dropout")}
    assert attention == {0.3}
    assert {p for name, p in rates.items() if "lora_dropout" in name} == {0.2}


# ------------------------------------------------------------------------- enable_dropout


def _tiny_llama(attn_implementation: str):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        attn_implementation=attn_implementation,
    )
    return LlamaModel(config)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_enable_dropout_on_tiny_llama(attn_implementation):
    model = _tiny_llama(attn_implementation).train()
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    assert model.config.attention_dropout == 0.0
    assert torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)

    # 2 attention modules + config.attention_dropout
    assert enable_dropout(model, 0.1) == 3
    assert all(layer.self_attn.attention_dropout == 0.1 for layer in model.layers)
    assert model.config.attention_dropout == 0.1
    assert not torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)

    model.eval()  # dropout is a train-mode thing only
    assert torch.equal(model(ids).last_hidden_state, model(ids).last_hidden_state)
    assert enable_dropout(model, 0.3) == 0  # never changes a non-zero rate


def test_enable_dropout_never_lowers_and_counts():
    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout = 0.0
            self.dropout_prob = 0.2
            self.flag = False

    model = torch.nn.Sequential(
        torch.nn.Dropout(0.0), torch.nn.Dropout(0.5), Attn(), torch.nn.Linear(2, 2)
    )
    assert enable_dropout(model, 0.1) == 2
    assert model[0].p == 0.1 and model[1].p == 0.5
    assert model[2].dropout == 0.1 and model[2].dropout_prob == 0.2 and model[2].flag is False
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        enable_dropout(model, 0.0)


def _tiny_bert(attn_implementation: str = "sdpa"):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, attn_implementation=attn_implementation)
    return BertModel(config, add_pooling_layer=False)  # dropout 0.1 everywhere, like MiniLM


def _saved_attention_maps(model, ids, mask) -> int:
    """How many (batch, heads, T, T) tensors a training forward keeps for its backward."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
    return sum(s == (*ids.shape[:1], 2, ids.shape[1], ids.shape[1]) for s in shapes)


def test_disable_dropout_makes_training_deterministic_and_drops_attention_maps():
    model = _tiny_bert().train()
    ids = torch.randint(1, 100, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding: SDPA gets a mask, as in real batches
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert not torch.equal(out, model(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert _saved_attention_maps(model, ids, mask) > 0  # dropout on: SDPA's math path

    # embeddings + per layer: attention probs, attention output, FFN output -> 7 modules
    assert disable_dropout(model) == 7
    assert model.config.attention_probs_dropout_prob == 0.1  # the config is left alone
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(out, model(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert _saved_attention_maps(model, ids, mask) == 0  # SDPA's fused kernel keeps no maps
    assert disable_dropout(model) == 0


def test_disable_dropout_float_attributes():
    model = _tiny_llama("sdpa")
    enable_dropout(model, 0.1)
    assert disable_dropout(model) == 2  # each layer's attention_dropout
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.layers)


# ------------------------------------------------------------------------------- info_nce


def _reference(a, b, t):
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return F.cross_entropy(a @ b.T / t, torch.arange(len(a)))


def test_info_nce_golden_value():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    loss, acc = info_nce(a, b, temperature=0.1)
    torch.testing.assert_close(loss, _reference(a, b, 0.1))
    torch.testing.assert_close(loss, torch.tensor(4.2800), atol=1e-4, rtol=0)  # seed 0 golden
    assert acc.dim() == 0 and not acc.requires_grad


def test_info_nce_by_hand():
    # orthonormal views, temperature 1: logits = I, loss = log(1 + e^-1) per row
    eye = torch.eye(2)
    loss, acc = info_nce(eye * 3.0, eye, temperature=1.0)  # scale is normalised away
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert acc.item() == 1.0
    # b swapped: every positive is the wrong column
    loss, acc = info_nce(eye, eye.flip(0), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.e), abs=1e-6)
    assert acc.item() == 0.0


def test_info_nce_perfect_alignment():
    a = F.normalize(torch.randn(16, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    loss, acc = info_nce(a, a.clone())
    assert acc.item() == 1.0
    assert loss.item() < 0.05


def test_info_nce_symmetric():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    loss, _ = info_nce(a, b, symmetric=True)
    expected = (_reference(a, b, 0.05) + _reference(b, a, 0.05)) / 2
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, info_nce(a, b)[0])


def test_info_nce_temperature_effect():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 16, generator=g)
    b = a + 0.3 * torch.randn(8, 16, generator=g)  # positives most similar
    losses = [info_nce(a, b, temperature=t)[0].item() for t in (0.02, 0.05, 0.5, 5.0, 1e3)]
    assert losses == sorted(losses)  # aligned pairs: sharper softmax, lower loss
    assert losses[-1] == pytest.approx(math.log(8), abs=1e-3)  # high t -> uniform
    with pytest.raises(ValueError, match="temperature"):
        info_nce(a, b, temperature=0.0)


def test_info_nce_gradients_flow_to_both_views():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(4, 8, generator=g, requires_grad=True)
    b = torch.randn(4, 8, generator=g, requires_grad=True)
    for symmetric in (False, True):
        a.grad = b.grad = None
        loss, _ = info_nce(a, b, symmetric=symmetric)
        loss.backward()
        assert a.grad is not None and a.grad.abs().sum() > 0
        assert b.grad is not None and b.grad.abs().sum() > 0


def test_info_nce_without_distributed_and_shape_errors():
    assert not torch.distributed.is_initialized()
    a = torch.randn(3, 4)
    loss, _ = info_nce(a, a, gather=True)  # gather is a no-op outside torch.distributed
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        info_nce(a, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        info_nce(torch.randn(3), torch.randn(3))
