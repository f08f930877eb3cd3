"""Run a model in two parts split at block L−k, without ever changing the model.

With a top-k adapter everything below block L−k is frozen and shared with the base: for a
given tokenized batch the input of block L−k never changes. So it can be computed once by
the base (:class:`BottomRunner`) and the adapted model then runs only its top k blocks
(:class:`TopKHead`), e.g. from a cache while training, or for many adapters on one base.

Both parts are *views* of the model, built once: a shallow copy of the transformers model
(and of each module on the way down to its block list) in which the block list holds only
the wanted blocks, the same block objects, so no weight is copied. The head's embedding
module is a pass-through that hands the model's ``inputs_embeds`` on unchanged, so
``model(inputs_embeds=states, attention_mask=mask)`` starts at block L−k and the model's
own forward builds masks, rotary positions and the final norm exactly as usual; the
bottom's final norm is an identity and its pooler is dropped, so it returns the input of
block L−k. The copies own their child, parameter, buffer and hook dictionaries and a config
copy that describes only their blocks, so building and running them never writes to the
model: no ``setattr`` on its modules, no hooks. Any number of threads can therefore run
heads of different adapters and one bottom runner on the shared base at the same time.

The same machinery serves many adapters on one base: :class:`MiddleRunner` runs the base
blocks between two split points (so adapters of different k share one bottom pass), and
``TopKHead(model, k, blocks=...)`` runs an adapter's private copies of the top blocks
(e.g. :func:`structural_copy`, new module objects over the same weights, into which PEFT
injects the adapter) with the model's masks, positions and final norm.

The one state a view shares with the model is each module's train / eval flag: calling
``head.train()`` switches the shared blocks too, as ``model.train()`` would.
On valid (non-padding) tokens the split forward equals the full forward (tested per
architecture, and bit for bit on CPU for the tiny models of the test suite).
"""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from lastlayer.core.encoder import Encoder, mean_pool
from lastlayer.core.layers import LayerStack, LayerStackError, find_layer_stack, top_k_layer_indices

FINAL_NORM_NAMES: tuple[str, ...] = ("norm", "final_norm", "ln_f", "final_layer_norm", "norm_f")
"""Names of the norm a model applies after its last block (Llama ``norm``, ModernBERT
``final_norm``, GPT-style ``ln_f``, T5 ``final_layer_norm``), on the model or next to the
block list."""


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a ``PeftModel`` (adapter layers included), or ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ---------------------------------------------------------------------------------------
# Shallow copies that own everything a forward or a caller might write to.


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object of the same class sharing ``module``'s children, weights and hooks.

    ``copy.copy`` of an ``nn.Module`` would share its ``_modules`` / ``_parameters`` /
    hook dictionaries, so replacing a child of the copy would replace it in the original:
    every dict, set and list attribute is copied (one level). Methods bound to the original
    (Accelerate's device hooks and autocast wrappers set ``module.forward``) are rebound to
    the copy, so calling the copy runs the copy.
    """
    clone = type(module).__new__(type(module))
    state = {}
    for key, value in module.__dict__.items():
        if isinstance(value, (dict, set, list)):
            value = copy.copy(value)
        elif isinstance(value, types.MethodType) and value.__self__ is module:
            value = types.MethodType(value.__func__, clone)
        elif (isinstance(value, functools.partial) and value.args
              and value.args[0] is module):
            value = functools.update_wrapper(
                functools.partial(value.func, clone, *value.args[1:], **value.keywords), value)
        state[key] = value
    state["_compiled_call_impl"] = None  # a compiled forward would be the original's
    clone.__dict__.update(state)
    return clone


def structural_copy(module: nn.Module, memo: dict[int, nn.Module] | None = None) -> nn.Module:
    """A copy of the whole module tree under ``module`` that shares every weight tensor.

    Every module object is new and owns its child, parameter, buffer and hook dictionaries
    (:func:`_shallow_copy` at each level), but holds the very same parameters and buffers,
    so it costs no weight memory. Replacing a child anywhere in the copy (as PEFT does when
    it wraps a linear layer) leaves ``module`` untouched; writing into a shared tensor in
    place (merging LoRA weights) would not, so merge into a ``copy.deepcopy`` instead.
    A module that appears twice in the tree is copied once.
    """
    memo = {} if memo is None else memo
    if id(module) not in memo:
        clone = memo[id(module)] = _shallow_copy(module)
        for name, child in clone._modules.items():
            if child is not None:
                clone._modules[name] = structural_copy(child, memo)
    return memo[id(module)]


def _config_for(config, blocks: range, num_layers: int):
    """A copy of ``config`` describing a model made of ``blocks`` only, that returns no extras.

    Per-layer settings (``layer_types``: sliding or full attention, ...) are looked up by
    position in the block list, so they are cut to the same blocks; no cache, hidden
    states or attentions are collected (collecting them would install hooks on the
    shared blocks).
    """
    config = copy.copy(config)
    for name, value in list(vars(config).items()):
        if name.endswith("layer_types") and isinstance(value, (list, tuple)) \
                and len(value) == num_layers:
            setattr(config, name, type(value)(value[blocks.start : blocks.stop]))
    config.num_hidden_layers = len(blocks)
    config.use_cache = False
    config.output_hidden_states = False
    config.output_attentions = False
    return config


def _view(base: nn.Module, blocks: range, replace: dict[str, nn.Module | None],
          modules: Sequence[nn.Module] | None = None) -> nn.Module:
    """A shallow copy of ``base`` whose block list holds ``blocks`` and whose modules at the
    dotted names in ``replace`` are swapped; every module on the way to a swapped one is
    copied too, every other module is the model's own. ``modules`` replaces the model's
    own block objects at those positions (e.g. an adapter's private copies of them)."""
    stack = find_layer_stack(base)
    if modules is None:
        modules = list(base.get_submodule(stack.prefix))[blocks.start : blocks.stop]
    replace = {**replace, stack.prefix: nn.ModuleList(modules)}
    copies = {"": _shallow_copy(base)}

    def copied(name: str) -> nn.Module:
        if name not in copies:
            parent_name, _, attr = name.rpartition(".")
            parent = copied(parent_name)
            copies[name] = parent._modules[attr] = _shallow_copy(parent._modules[attr])
        return copies[name]

    for name, module in replace.items():
        parent_name, _, attr = name.rpartition(".")
        copied(parent_name)._modules[attr] = module
        if module is not None:  # new modules take the model's mode; .train() would
            module.training = base.training  # also set the shared blocks in a ModuleList
    view = copies[""]
    view.__dict__["config"] = _config_for(base.config, blocks, stack.num_layers)
    view.__dict__["_output_capturing_hooks_installed"] = True  # never hook shared modules
    return view


def _final_norms(base: nn.Module, stack: LayerStack) -> list[str]:
    """Dotted names of the norms applied after the last block (on the model or its stack's
    container), e.g. ``["norm"]`` for Llama, ``[]`` for BERT."""
    container = stack.prefix.rpartition(".")[0]
    found = []
    for parent_name in dict.fromkeys(["", container]):
        parent = base.get_submodule(parent_name)
        for name in FINAL_NORM_NAMES:
            if isinstance(parent._modules.get(name), nn.Module):
                found.append(f"{parent_name}.{name}".lstrip("."))
    return found


def _embedding_names(base: nn.Module) -> list[str]:
    """Where the model's embedding modules sit: ``embeddings`` (BERT family: tokens +
    positions + norm) or the input embeddings (decoders, which skip them given
    ``inputs_embeds``; dropped from the head so it holds no vocabulary matrix)."""
    if isinstance(base._modules.get("embeddings"), nn.Module):
        return ["embeddings"]
    try:
        table = base.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # not a transformers model: keep them
        return []
    return [name for name, module in base.named_modules() if module is table][:1]


class StatesIn(nn.Module):
    """Stands in for a model's embedding module in a head: returns ``inputs_embeds`` as is."""

    def forward(self, *args, **kwargs) -> Tensor:
        states = kwargs.get("inputs_embeds")
        if states is None:  # DistilBERT passes (input_ids, inputs_embeds, ...) positionally
            floats = [a for a in args if isinstance(a, Tensor) and a.is_floating_point()]
            if len(floats) != 1:
                raise LayerStackError(
                    "lastlayer cannot run only the top blocks of this model: its forward "
                    "calls the embedding module without passing inputs_embeds on."
                )
            states = floats[0]
        return states


# ---------------------------------------------------------------------------------------
# The two parts.


class TopKHead(nn.Module):
    """Blocks L−k … L−1 of a model plus its final norm, run from block L−k's inputs.

    Built once per adapted model and ``k``; shares every parameter with the model (the
    adapter's included, so gradients reach them) and never modifies it. It holds the block
    objects the model has when it is built, so build it after attaching or loading the
    adapter. Pooling stays in :meth:`~lastlayer.core.encoder.Encoder.pool`.

    Args:
        model: A transformers model, or a ``PeftModel`` around one whose adapter layers
            sit inside the top ``k`` blocks.
        k: How many top blocks to run (1 … L).
        blocks: ``k`` modules to run instead of the model's own top ``k`` blocks, e.g. an
            adapter's private (merged, or adapter-wrapped) copies of them: the model's
            masks, positions and final norm still apply, and the model is not changed.
    """

    def __init__(self, model: nn.Module, k: int,
                 blocks: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        base = base_of(model)
        stack = find_layer_stack(base)
        top_k_layer_indices(stack.num_layers, k)  # LayerStackError unless 1 <= k <= L
        if blocks is not None and len(blocks) != k:
            raise LayerStackError(f"TopKHead(k={k}) needs {k} blocks, got {len(blocks)}.")
        replace: dict[str, nn.Module | None] = {name: StatesIn() for name in _embedding_names(base)}
        if "pooler" in base._modules:
            replace["pooler"] = None
        self.k, self.num_layers = k, stack.num_layers
        self.model = _view(base, range(stack.num_layers - k, stack.num_layers), replace,
                           None if blocks is None else list(blocks))
        self.training = base.training
        _mirror_quantization(self, base)

    def forward(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B, T, d)`` inputs of block L−k + ``(B, T)`` mask -> ``(B, T, d)`` last states."""
        return self.model(inputs_embeds=states, attention_mask=attention_mask)[0]


class BottomRunner(nn.Module):
    """Blocks 0 … L−k−1 of a model: a tokenized batch -> the inputs of block L−k.

    Computes nothing above them (no final norm, no pooler, no top block) and never
    modifies the model; with a top-k adapter the bottom is the base's, so one runner on
    the base serves every adapter on it.

    Args:
        model: A transformers model or a ``PeftModel`` around one.
        k: Return the inputs of block L−k (1 … L; k = L gives the embeddings' output).
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        base = base_of(model)
        stack = find_layer_stack(base)
        top_k_layer_indices(stack.num_layers, k)  # LayerStackError unless 1 <= k <= L
        replace: dict[str, nn.Module | None] = {
            name: nn.Identity() for name in _final_norms(base, stack)}
        if "pooler" in base._modules:
            replace["pooler"] = None
        self.k, self.num_layers = k, stack.num_layers
        self.model = _view(base, range(0, stack.num_layers - k), replace)
        self.training = base.training
        _mirror_quantization(self, base)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Model inputs (``input_ids``, ``attention_mask``, ...) -> ``(B, T, d)`` states."""
        return self.model(**batch)[0]


class MiddleRunner(nn.Module):
    """Blocks ``start`` … ``stop``−1 of a model: the inputs of block ``start`` -> the inputs
    of block ``stop``.

    The piece between two split points, for running one bottom pass shared by adapters of
    different ``k``: no embedding, no final norm, no pooler; never modifies the model.

    Args:
        model: A transformers model or a ``PeftModel`` around one.
        start: The first block to run (0 … L−1).
        stop: One past the last block to run (``start`` < ``stop`` ≤ L).
        blocks: ``stop − start`` modules to run instead of the model's own blocks there
            (an adapter's private copies of them, e.g. to read each adapted block's output).
    """

    def __init__(self, model: nn.Module, start: int, stop: int,
                 blocks: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        base = base_of(model)
        stack = find_layer_stack(base)
        if not 0 <= start < stop <= stack.num_layers:
            raise LayerStackError(f"cannot run blocks {start} … {stop - 1}: the model has "
                                  f"{stack.num_layers} blocks (0 … {stack.num_layers - 1}).")
        if blocks is not None and len(blocks) != stop - start:
            raise LayerStackError(f"MiddleRunner({start}, {stop}) needs {stop - start} blocks, "
                                  f"got {len(blocks)}.")
        replace: dict[str, nn.Module | None] = {name: StatesIn() for name in _embedding_names(base)}
        replace.update({name: nn.Identity() for name in _final_norms(base, stack)})
        if "pooler" in base._modules:
            replace["pooler"] = None
        self.start, self.stop, self.num_layers = start, stop, stack.num_layers
        self.model = _view(base, range(start, stop), replace,
                           None if blocks is None else list(blocks))
        self.training = base.training
        _mirror_quantization(self, base)

    def forward(self, states: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B, T, d)`` inputs of block ``start`` + ``(B, T)`` mask -> inputs of ``stop``."""
        return self.model(inputs_embeds=states, attention_mask=attention_mask)[0]


def _mirror_quantization(view: nn.Module, base: nn.Module) -> None:
    """Let Accelerate's ``prepare`` treat a view as it treats the model itself when that is
    bitsandbytes-quantized or spread over devices (where it leaves device placement alone)."""
    for name in ("is_loaded_in_8bit", "is_loaded_in_4bit", "hf_device_map"):
        if name in vars(base):
            setattr(view, name, getattr(base, name))


def pooled_block_inputs(
    encoder: Encoder, texts: Sequence[str], k: int, batch_size: int = 32, progress: bool = True,
    desc: str = "pool block inputs",
) -> np.ndarray:
    """The masked mean of block L−k's input states per text: what routing compares.

    Runs only the bottom L−k blocks (:class:`BottomRunner`), in eval mode, longest texts
    first (:meth:`Encoder.encode`). With a top-k adapter these states are the base's, so
    any adapted encoder on the base gives the same values.

    Returns:
        A ``(N, d)`` float32 array, rows in the order of ``texts``.
    """
    bottom = BottomRunner(encoder.model, k).eval()

    def pooled(batch: dict[str, Tensor]) -> Tensor:
        return mean_pool(bottom(batch), batch["attention_mask"]).float()

    return encoder.encode(texts, batch_size, progress=progress, desc=desc, embed=pooled).numpy()
