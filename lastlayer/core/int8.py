"""An int8 trunk for CPU inference: the base's shared blocks in dynamic int8 linear layers.

``Embedder(..., quantize="int8")`` (``--quantize int8`` on ``serve``, ``embed``, ``eval``)
runs the part of the base that every row shares (the bottom blocks, and the base blocks
between split points) through a copy whose linear layers are torch's dynamic int8 ones
(:func:`torch.ao.quantization.quantize_dynamic`: int8 weights per output channel, the
activations quantized per batch on the fly). Every adapter's head (its private top-k
blocks) and the base's own top blocks stay in the model's precision: they are built from
the base itself, never from this copy (:class:`lastlayer.core.engine.Engine`'s ``trunk``).

The copy shares the embeddings and everything outside the block list with the base (no
weight memory); each block is a private int8 copy computed in float32 (dynamic int8
layers take float32), its inputs cast up and its outputs cast back to the base's dtype,
so it sits under a bf16 base too. The base itself is never changed.

Quality costs something: int8 weights and activations shift the vectors more than bf16
does (``python -m benchmarks.precision`` measures the cosine to fp32 and the kNN change);
it is opt-in, never chosen by ``auto``.
"""

from __future__ import annotations

import copy
import typing
import warnings
from typing import Any

import torch
from torch import nn

from lastlayer.config import ConfigError, Quantize
from lastlayer.core.layers import find_layer_stack
from lastlayer.core.split import base_of, structural_copy

QUANTIZE: tuple[str, ...] = typing.get_args(Quantize)
"""The values of ``quantize`` (``--quantize``)."""


def check_quantize(quantize: str | None, quantization: str | None = None) -> None:
    """Refuse an unknown ``quantize`` value, or one combined with a bitsandbytes base.

    Raises:
        ConfigError: Saying which values work.
    """
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE)} (or None), got "
                          f"{quantize!r}.")
    if quantization is not None:
        raise ConfigError(f"quantize={quantize} (an int8 trunk) cannot be combined with "
                          f"quantization={quantization} (a bitsandbytes base): choose one.")


def quantize_trunk(engine, quantize: str | None, quantization: str | None = None) -> None:
    """Make ``engine`` (a :class:`lastlayer.core.engine.Engine`, before its first call) run
    its trunk in ``quantize`` (None: leave it as it is).

    Raises:
        ConfigError: See :func:`check_quantize` and :func:`int8_trunk`.
    """
    check_quantize(quantize, quantization)
    if quantize is not None:
        engine.trunk_model = int8_trunk(engine.model)


def int8_trunk(model: nn.Module) -> nn.Module:
    """A view of ``model`` whose blocks are int8 copies, for the engine's trunk views.

    Args:
        model: The base (a transformers model; unquantized, on the CPU).

    Raises:
        ConfigError: The model is not on the CPU (dynamic int8 layers are CPU-only).
    """
    base = base_of(model)
    parameter = next(base.parameters())
    if parameter.device.type != "cpu":
        raise ConfigError(f"quantize=int8 runs on the CPU only; this base is on "
                          f"{parameter.device}: load it with device='cpu' (--cpu).")
    view = structural_copy(base)
    blocks = view.get_submodule(find_layer_stack(base).prefix)
    for i, block in enumerate(blocks):
        blocks[i] = int8_block(block, parameter.dtype)
    return view


def int8_block(block: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A private float32 copy of ``block`` with int8 dynamic linear layers; it takes and
    gives tensors of ``dtype`` (the base's)."""
    quantized = copy.deepcopy(block).float()
    with warnings.catch_warnings():  # torch.ao's notice that torchao is its successor
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            quantized, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8, inplace=True)
    if dtype != torch.float32:
        quantized.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
        quantized.register_forward_hook(lambda _m, _a, out: _cast(out, dtype))
    return quantized


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors in ``value`` (nested in tuples, lists, dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {key: _cast(v, dtype) for key, v in value.items()}
    return value


def _cast_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return _cast(args, torch.float32), _cast(kwargs, torch.float32)
