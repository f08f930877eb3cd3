"""The split forward: top-k blocks from cached inputs equal the full forward, per architecture."""

from __future__ import annotations

import pytest
import torch
from tiny import ARCHITECTURES, tiny_model, tiny_tokenizer

from lastlayer.config import AdapterConfig
from lastlayer.core.adapters import attach
from lastlayer.core.encoder import Encoder
from lastlayer.core.split import encode_from_cache, encode_with_cache, top_blocks_only

TEXTS = [
    "A short one.",
    "Chronic kidney disease in elderly patients with diabetes mellitus.",
    "Aspirin",
    "The patient was admitted with chest pain and shortness of breath today.",
]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("k", [1, 2])
def test_split_forward_equals_full_forward(arch: str, k: int):
    model = tiny_model(arch, num_layers=4)
    batch = {
        key: value
        for key, value in tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt").items()
        if key != "token_type_ids"
    }
    with torch.inference_mode():
        out = model(**batch, output_hidden_states=True)
        with top_blocks_only(model, k, out.hidden_states[4 - k]):
            split = model(**batch).last_hidden_state
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(split[valid], out.last_hidden_state[valid], rtol=1e-5, atol=1e-5)
    assert len(model.get_submodule(_stack_prefix(arch))) == 4, "the block list is restored"


def _stack_prefix(arch: str) -> str:
    from tiny import EXPECTED_PREFIX

    return EXPECTED_PREFIX[arch]


@pytest.mark.parametrize("arch, pooling", [("bert", "mean"), ("llama", "last")])
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_adapted_embeddings_from_the_base_cache_equal_a_full_pass(arch, pooling, kind):
    encoder = Encoder(
        model=tiny_model(arch, num_layers=4), tokenizer=tiny_tokenizer(), pooling=pooling
    )
    base, cache = encode_with_cache(encoder, TEXTS, k=2, batch_size=3, desc="base")
    torch.testing.assert_close(base, encoder.encode(TEXTS, batch_size=3), rtol=1e-5, atol=1e-6)

    attach(encoder, AdapterConfig(kind=kind, top_k=2))
    with torch.no_grad():
        for param in encoder.model.parameters():
            if param.requires_grad:  # a trained-looking adapter, not the identity it starts as
                param.add_(0.05 * torch.randn_like(param))
    full = encoder.encode(TEXTS, batch_size=3)
    cached = encode_from_cache(encoder, TEXTS, cache, k=2, batch_size=3)
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
    with torch.no_grad():
        for param in encoder.model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
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
    cached = loss_and_grads(
        lambda: embed_top_k(encoder, encoder.model, pad_cached(cached_a, rows, pad), 2),
        lambda: embed_top_k(encoder, encoder.model, pad_cached(cached_b, rows, pad), 2),
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
