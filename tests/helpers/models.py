"""What tests do to a model and check about it: a trained-looking adapter, and a snapshot
that proves a model (the Embedder's base, a split forward's model) was never changed."""

from __future__ import annotations

import torch
from torch import nn

from lastlayer.core.split import base_of


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Move every trainable (adapter) weight by seeded noise, as training would: an
    untrained adapter is the identity (LoRA B is zero), which would hide a dropped one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def _describe(value):
    """A comparable picture of one attribute: containers by their members' identities."""
    if isinstance(value, dict):
        return tuple((repr(k), id(v)) for k, v in value.items())
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(repr(v) for v in value))
    if isinstance(value, (list, tuple)):
        return tuple(id(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return id(value)


def snapshot(model: nn.Module):
    """Every module's attributes (children, weights, hook tables, flags, methods by
    identity), the config, and every tensor's bytes."""
    tree = [(name, type(module).__name__, id(module),
             tuple((key, _describe(value)) for key, value in vars(module).items()))
            for name, module in model.named_modules(remove_duplicate=False)]
    state = {name: (t.dtype, t.detach().cpu().clone()) for name, t in model.state_dict().items()}
    return tree, state, base_of(model).config.to_json_string()


def assert_unchanged(model: nn.Module, before) -> None:
    """Assert that ``model`` is what :func:`snapshot` saw: tree, config and every tensor."""
    tree, state, config = snapshot(model)
    assert tree == before[0], "the module tree changed"
    assert config == before[2], "the config changed"
    assert state.keys() == before[1].keys()
    for name, (dtype, tensor) in state.items():
        assert dtype == before[1][name][0] and torch.equal(tensor, before[1][name][1]), name
