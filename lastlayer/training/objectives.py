"""What each objective switches on or off in the model (dropout), before training starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# ---------------------------------------------------------------------- model dropout

_MODULE_DROPOUT_ATTRS = ("attention_dropout", "dropout_prob", "dropout")
_CONFIG_DROPOUT_ATTRS = ("attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob")


def _is_rate(value: object) -> bool:
    """A dropout rate attribute (a number, not a flag or a module)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_zero_rate(value: object) -> bool:
    return _is_rate(value) and value == 0


def enable_dropout(model: nn.Module, p: float) -> int:
    """Switch dropout on where a model ships with it at 0, so dropout views differ.

    Decoder LMs (Llama, SmolLM2, ...) set ``attention_dropout=0.0``: without this, the
    ``dropout`` objective sees two identical embeddings and its loss carries no signal.
    Changed, where currently exactly 0 (a non-zero rate is never lowered):

    - ``nn.Dropout`` (and other ``_DropoutNd``) modules: ``p``.
    - Float attributes ``attention_dropout``, ``dropout_prob`` or ``dropout`` of any
      module. transformers 5 Llama attention copies ``config.attention_dropout`` into
      ``self.attention_dropout`` at construction and passes
      ``dropout=self.attention_dropout if self.training else 0.0`` to its attention
      kernel (eager and SDPA), so the module attribute is what counts.
    - ``model.config.attention_dropout`` / ``hidden_dropout_prob`` /
      ``attention_probs_dropout_prob``, so a saved config records it (and modules built
      later from the config get it).

    Args:
        model: Any ``nn.Module``, e.g. a transformers model or a PEFT wrapper.
        p: Dropout probability in (0, 1).

    Returns:
        The number of places changed.
    """
    from torch import nn

    if not 0 < p < 1:
        raise ValueError(f"dropout p must be in (0, 1), got {p}")
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p == 0:
            module.p = p
            changed += 1
        for attr in _MODULE_DROPOUT_ATTRS:
            if _is_zero_rate(getattr(module, attr, None)):
                setattr(module, attr, float(p))
                changed += 1
    config = getattr(model, "config", None)
    for attr in _CONFIG_DROPOUT_ATTRS:
        if config is not None and _is_zero_rate(getattr(config, attr, None)):
            setattr(config, attr, float(p))
            changed += 1
    return changed


def disable_dropout(model: nn.Module) -> int:
    """Switch a model's own dropout off for training (``objective.model_dropout: false``).

    Crop and span views differ already; the encoder's dropout (BERT-style models: 0.1) is
    extra noise on top. Without it, PyTorch's fused SDPA kernel can run in training (on CPU
    it takes no dropout), so the attention probabilities, ``(batch, heads, T, T)`` per
    block, are no longer kept for the backward: on MiniLM's top-2 blocks that is about 40 %
    of the saved activations and ~20 % of a step (docs/speed.md). Call it
    before attaching the adapter, so the adapter's own ``adapter.dropout`` is untouched.

    Changed, where non-zero: ``nn.Dropout`` (and other ``_DropoutNd``) modules, and the
    float attributes ``attention_dropout``, ``dropout_prob`` or ``dropout`` that attention
    modules pass to their kernel. The model's config is left as it is.

    Returns:
        The number of places changed.
    """
    from torch import nn

    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            module.p = 0.0
            changed += 1
        for attr in _MODULE_DROPOUT_ATTRS:
            value = getattr(module, attr, None)
            if _is_rate(value) and value > 0:
                setattr(module, attr, 0.0)
                changed += 1
    return changed


# ------------------------------------------------------------------------------- loss

