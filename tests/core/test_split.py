"""The split forward: a bottom runner and a top-k head equal the full forward, per
architecture, never change the model, and serve several adapters from several threads."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import transformers as tf
from helpers.models import assert_unchanged, perturb, snapshot
from helpers.tiny import ARCHITECTURES, FFN, HEADS, HIDDEN, _special_ids, tiny_model, tiny_tokenizer
from torch import nn

from lastlayer.config import AdapterConfig, ModelConfig
from lastlayer.core.adapters import attach
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.heads import embed_from_inputs, embed_keeping_inputs, model_head, trained_head
from lastlayer.core.layers import LayerStackError
from lastlayer.core.split import (
    BottomRunner,
    MiddleRunner,
    TopKHead,
    structural_copy,
)

TEXTS = [
    "A short one.",
    "Chronic kidney disease in elderly patients with diabetes mellitus.",
    "Aspirin",
    "The patient was admitted with chest pain and shortness of breath today.",
]


def _batch(texts: list[str] = TEXTS) -> dict[str, torch.Tensor]:
    batch = tiny_tokenizer()(texts, padding=True, return_tensors="pt")
    return {key: value for key, value in batch.items() if key != "token_type_ids"}


# ---------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_split_forward_equals_full_forward(arch: str, k: int):
    model, batch = tiny_model(arch, num_layers=4), _batch()
    with torch.inference_mode():
        states = BottomRunner(model, k)(batch)
        split = TopKHead(model, k)(states, batch["attention_mask"])
        full = model(**batch, output_hidden_states=True)
    # The bottom is the model's own computation up to block L-k: identical, padding included.
    assert torch.equal(states, full.hidden_states[4 - k])
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(split[valid], full.last_hidden_state[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_split_in_three_parts_and_over_private_blocks(arch: str):
    """bottom (block 0) -> middle (blocks 1, 2) -> head (block 3) is the full forward, and a
    head over structural copies of the top blocks is the model's own head; nothing changes."""
    model, batch = tiny_model(arch, num_layers=4), _batch()
    mask, valid = batch["attention_mask"], batch["attention_mask"].bool()
    with torch.inference_mode():  # (the model's own forward may install hooks on it)
        full = model(**batch, output_hidden_states=True)
    before = snapshot(model)
    stack = _stack(model)
    copies = [structural_copy(block) for block in stack[2:]]
    with torch.inference_mode():
        middle = MiddleRunner(model, 1, 3)(BottomRunner(model, 3)(batch), mask)
        three = TopKHead(model, 1)(middle, mask)
        own = TopKHead(model, 2)(full.hidden_states[2], mask)
        private = TopKHead(model, 2, blocks=copies)(full.hidden_states[2], mask)
    assert torch.equal(middle[valid], full.hidden_states[3][valid])
    torch.testing.assert_close(three[valid], full.last_hidden_state[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(private, own)
    assert_unchanged(model, before)
    # copies: new module objects all the way down, the model's very tensors
    originals = {id(m) for m in model.modules()}
    for copy_, block in zip(copies, stack[2:], strict=True):
        assert not {id(m) for m in copy_.modules()} & originals
        assert [id(p) for p in copy_.parameters()] == [id(p) for p in block.parameters()]
    with pytest.raises(LayerStackError, match=r"needs 2 blocks, got 1"):
        TopKHead(model, 2, blocks=copies[:1])
    with pytest.raises(LayerStackError, match=r"cannot run blocks 3 … 4: the model has 4"):
        MiddleRunner(model, 3, 5)


def test_per_layer_settings_follow_the_blocks():
    """Qwen2 looks up each block's attention type (sliding window or full) by its position
    in the block list: the head's blocks must still get their own types."""
    torch.manual_seed(0)
    config = tf.Qwen2Config(
        hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        intermediate_size=FFN, num_hidden_layers=4, max_position_embeddings=130,
        use_sliding_window=True, sliding_window=3,
        layer_types=["full_attention", "full_attention", "sliding_attention", "full_attention"],
        **_special_ids(),
    )
    model, batch = tf.Qwen2Model(config).eval(), _batch()
    valid = batch["attention_mask"].bool()
    with torch.inference_mode():
        full = model(**batch).last_hidden_state
        for k in (2, 3):  # block 2 (sliding) sits at position 0 or 1 of the head
            split = TopKHead(model, k)(BottomRunner(model, k)(batch), batch["attention_mask"])
            torch.testing.assert_close(split[valid], full[valid], rtol=1e-5, atol=1e-5)
    assert model.config.layer_types[2] == "sliding_attention" and model.config.use_cache


@pytest.mark.parametrize("k", [0, 5, True])
def test_k_outside_the_stack_is_refused(k):
    model = tiny_model("bert", num_layers=4)
    for part in (TopKHead, BottomRunner):
        with pytest.raises(LayerStackError, match="choose 1..4"):
            part(model, k)


@pytest.mark.parametrize("arch, pooling", [("bert", "mean"), ("llama", "last")])
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_adapted_embeddings_from_the_base_cache_equal_a_full_pass(arch, pooling, kind):
    encoder = Encoder(
        model=tiny_model(arch, num_layers=4), tokenizer=tiny_tokenizer(), pooling=pooling
    )
    base, cache = embed_keeping_inputs(encoder, TEXTS, model_head(encoder, 2), batch_size=3)
    torch.testing.assert_close(base, encoder.encode(TEXTS, batch_size=3), rtol=1e-5, atol=1e-6)

    attach(encoder, AdapterConfig(kind=kind, top_k=2))
    perturb(encoder.model)
    full = encoder.encode(TEXTS, batch_size=3)
    cached = embed_from_inputs(encoder, TEXTS, cache, trained_head(encoder, kind, 2),
                               batch_size=3)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, base, atol=1e-3), "the adapter changed the embeddings"


@pytest.mark.parametrize(
    "arch, pooling", [("bert", "mean"), ("llama", "mean"), ("distilbert", "cls")]
)
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_training_from_cached_states_gives_the_same_loss_and_gradients(arch, pooling, kind):
    from lastlayer.training.cache import cache_views, embed_top_k, pad_cached
    from lastlayer.training.loss import info_nce

    encoder = Encoder(
        model=tiny_model(arch, num_layers=4), tokenizer=tiny_tokenizer(), pooling=pooling
    )
    attach(encoder, AdapterConfig(kind=kind, top_k=2))
    encoder.model.eval()  # no dropout: both paths must agree exactly
    perturb(encoder.model)
    views_a, views_b = TEXTS, list(reversed(TEXTS))

    def loss_and_grads(embed_a, embed_b):
        encoder.model.zero_grad()
        loss, _ = info_nce(embed_a(), embed_b())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    normal = loss_and_grads(
        lambda: encoder.embed(encoder.tokenize(views_a)),
        lambda: encoder.embed(encoder.tokenize(views_b)),
    )
    cached_a, cached_b = (cache_views(encoder, v, k=2, batch_size=3) for v in (views_a, views_b))
    rows = list(range(len(TEXTS)))
    pad = encoder.tokenizer.pad_token_id
    head = TopKHead(encoder.model, 2)
    cached = loss_and_grads(
        lambda: embed_top_k(encoder, head, pad_cached(cached_a, rows, pad)),
        lambda: embed_top_k(encoder, head, pad_cached(cached_b, rows, pad)),
    )
    torch.testing.assert_close(cached[0], normal[0], rtol=1e-5, atol=1e-6)
    assert cached[1].keys() == normal[1].keys()
    for name in normal[1]:
        torch.testing.assert_close(cached[1][name], normal[1][name], rtol=1e-4, atol=1e-6)
    assert cached_a.nbytes() > 0 and len(cached_a) == len(TEXTS)
    assert all(len(ids) == len(states) == cached_a.length(i)
               for i, (ids, states) in enumerate(cached_a[i] for i in rows))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_mapped_cache_equals_the_in_memory_one_and_leaves_no_file(tmp_path, dtype):
    from lastlayer.training.cache import cache_views

    encoder = Encoder(model=tiny_model("llama", num_layers=4), tokenizer=tiny_tokenizer())
    in_ram = cache_views(encoder, TEXTS, k=2, batch_size=3, dtype=dtype)
    mapped = cache_views(encoder, TEXTS, k=2, batch_size=3, dtype=dtype, folder=tmp_path / "c")
    assert mapped.states.dtype == dtype
    assert in_ram.lengths() == mapped.lengths() and sum(mapped.lengths()) == len(mapped.ids)
    torch.testing.assert_close(mapped.states, in_ram.states, rtol=0, atol=0)
    assert torch.equal(mapped.ids, in_ram.ids)
    assert list((tmp_path / "c").iterdir()) == []  # unlinked once mapped
    # Unpadded: each text holds exactly its own tokens, in its own order.
    ids, _ = mapped[0]
    assert ids.tolist() == encoder.tokenize([TEXTS[0]])["input_ids"][0].tolist()


# ---------------------------------------------------------------------------------------
# No mutation, shared weights


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_building_and_running_the_parts_never_changes_the_model(arch):
    model, batch = tiny_model(arch, num_layers=4), _batch()
    before = snapshot(model)
    with torch.inference_mode():
        for k in (1, 2, 4):
            head, bottom = TopKHead(model, k), BottomRunner(model, k)
            head(bottom(batch), batch["attention_mask"])
    assert_unchanged(model, before)

    # The parts hold the model's own blocks and weights; the head no vocabulary matrix.
    head, bottom = TopKHead(model, 2), BottomRunner(model, 2)
    params = {id(p) for p in model.parameters()}
    assert {id(p) for p in head.parameters()} < params
    assert {id(p) for p in bottom.parameters()} < params
    table = model.get_input_embeddings().weight
    assert all(p is not table for p in head.parameters())
    assert any(p is table for p in bottom.parameters())
    blocks = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    assert list(_stack(head)) == list(max(blocks, key=len))[2:]
    assert list(_stack(bottom)) == list(max(blocks, key=len))[:2]


def _stack(part: nn.Module) -> nn.ModuleList:
    return max((m for m in part.modules() if isinstance(m, nn.ModuleList)), key=len)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_training_through_a_head_changes_only_the_adapters_gradients(kind):
    encoder = Encoder(model=tiny_model("llama", num_layers=4), tokenizer=tiny_tokenizer())
    attach(encoder, AdapterConfig(kind=kind, top_k=2))  # in train mode
    perturb(encoder.model)
    model, batch = encoder.model, _batch()
    with torch.no_grad():
        states = BottomRunner(model, 2)(batch)
    before = snapshot(model)
    head = TopKHead(model, 2)
    assert head.training and all(block.training for block in _stack(head))
    head(states, batch["attention_mask"]).pow(2).mean().backward()
    assert_unchanged(model, before)  # .grad is no attribute of a module
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable and trainable
    assert all(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------
# Several adapters on one base, several threads


def test_threads_serving_two_adapters_and_the_base_match_sequential_runs():
    base = tiny_model("bert", num_layers=4)
    adapted = []
    for seed, kind in enumerate(["lora", "full"]):
        encoder = Encoder(model=copy.deepcopy(base), tokenizer=tiny_tokenizer())
        attach(encoder, AdapterConfig(kind=kind, top_k=2))
        perturb(encoder.model, seed)
        adapted.append(encoder.model.eval())
    bottom = BottomRunner(base, 2)  # one, shared by every adapter
    heads = [TopKHead(model, 2) for model in adapted]
    words = " ".join(TEXTS).split()
    batches = [_batch([" ".join(words[i : i + n]) for n in (3, 9, 5)]) for i in range(6)]

    def serve(job: int, i: int) -> torch.Tensor:
        batch = batches[i % len(batches)]
        if job == len(heads):  # plain requests to the base, meanwhile
            return base(**batch).last_hidden_state
        return heads[job](bottom(batch), batch["attention_mask"])

    rounds = 30
    with torch.inference_mode():
        expected = {(job, i): serve(job, i) for job in range(3) for i in range(len(batches))}
        for job, model in enumerate(adapted):  # the split equals each adapted model's forward
            batch = batches[0]
            valid = batch["attention_mask"].bool()
            torch.testing.assert_close(expected[(job, 0)][valid],
                                       model(**batch).last_hidden_state[valid])
    assert not torch.allclose(expected[(0, 0)], expected[(1, 0)], atol=1e-3)

    results: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def worker(job: int) -> None:
        try:
            start.wait()
            with torch.inference_mode():
                for i in range(rounds):
                    results[(job, i)] = serve(job, i)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(job,)) for job in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 3 * rounds
    for (job, i), out in results.items():
        assert torch.equal(out, expected[(job, i % len(batches))]), (job, i)


# ---------------------------------------------------------------------------------------
# bitsandbytes


@pytest.mark.bnb
def test_split_forward_of_an_8bit_base_with_lora(saved_models):
    pytest.importorskip("bitsandbytes")
    cfg = ModelConfig(name_or_path=str(saved_models["bert"]), quantization="8bit")
    encoder = load_encoder(cfg, device="cpu")
    attach(encoder, AdapterConfig(kind="lora", top_k=2))
    perturb(encoder.model)
    model, batch = encoder.model.eval(), _batch()
    before = snapshot(model)
    with torch.no_grad():
        states = BottomRunner(model, 2)(batch)
        split = TopKHead(model, 2)(states, batch["attention_mask"])
    assert_unchanged(model, before)
    with torch.no_grad():
        full = model(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(split[valid], full[valid], rtol=1e-5, atol=1e-5)
    TopKHead(model, 2)(states, batch["attention_mask"]).pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
