"""Tests for lastlayer.core.layers over every tiny architecture in helpers/tiny.py."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import ARCHITECTURES, EXPECTED_PREFIX, tiny_model, tiny_tokenizer
from torch import nn

from lastlayer.core.layers import (
    LayerStack,
    LayerStackError,
    find_layer_stack,
    layer_index_of,
    top_k_layer_indices,
    top_k_linear_names,
    top_k_module_names,
)

ARCHS = sorted(ARCHITECTURES)
NUM_LAYERS = 4

# arch -> (query-projection suffix, FFN-output suffix), as named in transformers 5.23.
SUFFIXES = {
    "bert": ("query", "intermediate.dense"),
    "roberta": ("query", "intermediate.dense"),
    "xlm-roberta": ("query", "intermediate.dense"),
    "mpnet": ("attn.q", "output.dense"),
    "distilbert": ("q_lin", "ffn.lin2"),
    "modernbert": ("attn.Wqkv", "mlp.Wo"),
    "llama": ("q_proj", "down_proj"),
}


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    """One tiny model per architecture, shared by the tests of this module."""
    return request.param, tiny_model(request.param, num_layers=NUM_LAYERS)


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    """All nn.Linear submodules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_tiny_models_forward_with_padding(arch_model: tuple[str, nn.Module]) -> None:
    _, model = arch_model
    batch = tiny_tokenizer()(
        ["Obstructive sleep apnea in loud snorers.", "Asthma."],
        padding=True,
        return_tensors="pt",
    )
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.last_hidden_state.shape == (*batch["input_ids"].shape, 32)
    assert torch.isfinite(out.last_hidden_state).all()
    assert not model.training


def test_tiny_model_is_deterministic() -> None:
    a, b = tiny_model("bert", seed=3), tiny_model("bert", seed=3)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_find_layer_stack(arch_model: tuple[str, nn.Module]) -> None:
    arch, model = arch_model
    stack = find_layer_stack(model)
    assert stack == LayerStack(prefix=EXPECTED_PREFIX[arch], num_layers=NUM_LAYERS)
    assert isinstance(model.get_submodule(stack.prefix), nn.ModuleList)
    assert stack.block_name(2) == f"{EXPECTED_PREFIX[arch]}.2"


@pytest.mark.parametrize("num_layers", [1, 3])
def test_num_layers_follows_config(num_layers: int) -> None:
    for arch in ("distilbert", "llama"):
        assert find_layer_stack(tiny_model(arch, num_layers=num_layers)).num_layers == num_layers


@pytest.mark.parametrize("k", [1, 2, NUM_LAYERS])
def test_top_k_module_names_are_the_last_k_blocks(
    arch_model: tuple[str, nn.Module], k: int
) -> None:
    arch, model = arch_model
    names = top_k_module_names(model, k)
    blocks = model.get_submodule(EXPECTED_PREFIX[arch])
    assert names == [f"{EXPECTED_PREFIX[arch]}.{i}" for i in range(NUM_LAYERS - k, NUM_LAYERS)]
    for offset, name in enumerate(names):
        assert model.get_submodule(name) is blocks[NUM_LAYERS - k + offset]


@pytest.mark.parametrize("k", [0, NUM_LAYERS + 1, -1])
def test_top_k_out_of_range_raises(arch_model: tuple[str, nn.Module], k: int) -> None:
    _, model = arch_model
    with pytest.raises(LayerStackError, match=rf"top_k={k} .*{NUM_LAYERS} layers; choose 1\.\.4"):
        top_k_module_names(model, k)
    with pytest.raises(LayerStackError, match="choose 1..4"):
        top_k_linear_names(model, k)


def test_top_k_layer_indices() -> None:
    assert top_k_layer_indices(6, 1) == [5]
    assert top_k_layer_indices(6, 3) == [3, 4, 5]
    assert top_k_layer_indices(6, 6) == [0, 1, 2, 3, 4, 5]
    for bad in (0, 7, 2.0, True):
        with pytest.raises(LayerStackError):
            top_k_layer_indices(6, bad)


@pytest.mark.parametrize("k", [1, 2, NUM_LAYERS])
def test_top_k_linear_names_stay_inside_top_k(arch_model: tuple[str, nn.Module], k: int) -> None:
    arch, model = arch_model
    prefix = EXPECTED_PREFIX[arch]
    top = tuple(f"{prefix}.{i}." for i in range(NUM_LAYERS - k, NUM_LAYERS))
    linears = _linears(model)
    names = top_k_linear_names(model, k)
    assert names, "no linear layers found"
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in names)
    assert names == [n for n in linears if n.startswith(top)]
    below = [n for n in names if n.startswith(f"{prefix}.") and not n.startswith(top)]
    assert below == []
    assert len(names) % k == 0  # every block contributes the same linears


def test_top_k_linear_names_skip_linears_outside_stack() -> None:
    model = tiny_model("bert")
    assert "pooler.dense" in _linears(model)
    assert "pooler.dense" not in top_k_linear_names(model, NUM_LAYERS)


def test_suffix_filtering(arch_model: tuple[str, nn.Module]) -> None:
    arch, model = arch_model
    query, ffn_out = SUFFIXES[arch]
    names = top_k_linear_names(model, 2, suffixes=[query])
    assert len(names) == 2
    assert all(n == query or n.endswith("." + query) for n in names)
    both = top_k_linear_names(model, 2, suffixes=[query, ffn_out])
    assert len(both) == 4
    assert set(names) < set(both)
    assert both == [n for n in top_k_linear_names(model, 2) if n in set(both)]


def test_suffix_matches_whole_name_components() -> None:
    model = tiny_model("bert")
    assert top_k_linear_names(model, 1, suffixes=["attention.self.query"]) == [
        "encoder.layer.3.attention.self.query"
    ]
    # "output.dense" is both attention.output.dense and the FFN output.dense.
    assert top_k_linear_names(model, 1, suffixes=["output.dense"]) == [
        "encoder.layer.3.attention.output.dense",
        "encoder.layer.3.output.dense",
    ]
    with pytest.raises(LayerStackError):
        top_k_linear_names(model, 1, suffixes=["uery"])


def test_unknown_suffix_lists_available(arch_model: tuple[str, nn.Module]) -> None:
    arch, model = arch_model
    query, _ = SUFFIXES[arch]
    with pytest.raises(LayerStackError) as info:
        top_k_linear_names(model, 1, suffixes=[query, "no_such_proj"])
    message = str(info.value)
    assert "no_such_proj" in message
    assert "Available linear suffixes" in message
    assert query in message


class _Wrapper(nn.Module):
    """Holds a model under `model`, like a *ForCausalLM head does."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.model = inner
        self.lm_head = nn.Linear(32, 8)


def test_prefixed_stack() -> None:
    model = _Wrapper(tiny_model("llama"))
    stack = find_layer_stack(model)
    assert stack == LayerStack(prefix="model.layers", num_layers=NUM_LAYERS)
    assert top_k_module_names(model, 2) == ["model.layers.2", "model.layers.3"]
    names = top_k_linear_names(model, 1)
    assert names and all(n.startswith("model.layers.3.") for n in names)
    assert top_k_linear_names(model, 1, suffixes=["self_attn.q_proj"]) == [
        "model.layers.3.self_attn.q_proj"
    ]


def test_no_stack_raises() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.layers = nn.ModuleList()  # empty: not a stack
            self.heads = nn.ModuleList([nn.Linear(4, 4)])  # wrong name

    with pytest.raises(LayerStackError, match="Plain"):
        find_layer_stack(Plain())
    with pytest.raises(LayerStackError, match="Plain"):
        top_k_linear_names(Plain(), 1)


def test_most_children_then_shallowest_wins() -> None:
    def stack(n: int) -> nn.ModuleList:
        return nn.ModuleList([nn.Linear(2, 2) for _ in range(n)])

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.block = stack(3)
            self.h = stack(2)

    class Tie(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layers = stack(3)
            self.blocks = stack(3)

    assert find_layer_stack(Deep()) == LayerStack("encoder.block", 3)
    assert find_layer_stack(Tie()) == LayerStack("blocks", 3)


def test_layer_index_of() -> None:
    stack = LayerStack(prefix="encoder.layer", num_layers=6)
    assert layer_index_of("encoder.layer.3.attention.self.query", stack) == 3
    assert layer_index_of("encoder.layer.5", stack) == 5
    assert layer_index_of("encoder.layer.11.output.dense", stack) is None
    assert layer_index_of("encoder.layer", stack) is None
    assert layer_index_of("encoder.layer_norm.weight", stack) is None
    assert layer_index_of("pooler.dense", stack) is None
    assert layer_index_of("model.encoder.layer.3.output", stack) is None


@pytest.mark.bnb
def test_bitsandbytes_linears_subclass_linear() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    assert issubclass(bnb.nn.Linear8bitLt, torch.nn.Linear)
    assert issubclass(bnb.nn.Linear4bit, torch.nn.Linear)
