"""The objectives, one object per ``objective.kind``: views, cache sharing, model switches.

Each :class:`Objective` in :data:`OBJECTIVES` knows its view maker and that maker's
settings from the recipe, whether its two views are the same text (so cached pairs store
one set of states), and what it switches on or off in the model around attaching the
adapter (dropout, through :func:`enable_dropout` / :func:`disable_dropout`).

Adding an objective: write its view maker (``lastlayer.training.views``), add its object
to :data:`OBJECTIVES` (a subclass of :class:`Objective` if it needs other settings or
model switches), and its name to ``config.ObjectiveKind``, the recipe's menu (a test
checks that the two agree). Pairs, the cache and the loop ask the object, never the name.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lastlayer.training.views import ViewStats, crop_views, dropout_views, span_views

if TYPE_CHECKING:
    from torch import nn

    from lastlayer.config import ObjectiveConfig

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



# -------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """One self-supervised objective: how its two views are cut, and what it does to the model.

    Everything a kind (``objective.kind``) means lives on its object in :data:`OBJECTIVES`,
    so adding an objective is one subclass (or instance) and one registry entry.

    Attributes:
        kind: The recipe's ``objective.kind``.
        view_maker: ``maker(doc, rng, stats=..., **kwargs) -> (view_a, view_b)``
            (:mod:`lastlayer.training.views`).
        same_text: Whether both views are always the same text (the model's dropout makes
            the embeddings differ). The cache then stores one set of states per pair.
    """

    kind: str
    view_maker: Callable[..., tuple[str, str]]
    same_text: bool = False

    def view_kwargs(self, cfg: ObjectiveConfig) -> dict[str, Any]:
        """The recipe's objective settings as keyword arguments of :attr:`view_maker`."""
        return {
            "sentences_per_crop": cfg.sentences_per_crop,
            "min_chars": cfg.min_sentence_chars,
            "max_chars": cfg.max_sentence_chars,
        }

    def before_attach(self, model: nn.Module, cfg: ObjectiveConfig) -> list[str]:
        """Switch things in the base model before the adapter goes on; say what changed.

        ``objective.model_dropout: false`` switches the model's own dropout off here, so
        the adapter's own ``adapter.dropout`` is untouched (see :func:`disable_dropout`).
        """
        if cfg.model_dropout:
            return []
        changed = disable_dropout(model)
        return [f"objective.model_dropout=false: switched dropout off in {changed} places."]

    def after_attach(self, model: nn.Module, cfg: ObjectiveConfig) -> list[str]:
        """Switch things in the adapted model (adapter included); say what changed."""
        return []


@dataclass(frozen=True)
class SpanObjective(Objective):
    """Contriever's random word spans: its view maker takes span ratios, not sentences."""

    def view_kwargs(self, cfg: ObjectiveConfig) -> dict[str, Any]:
        return {"min_ratio": cfg.span_min_ratio, "max_ratio": cfg.span_max_ratio}


@dataclass(frozen=True)
class DropoutObjective(Objective):
    """SimCSE: one crop twice; dropout, switched on where the model has none, tells them apart."""

    def after_attach(self, model: nn.Module, cfg: ObjectiveConfig) -> list[str]:
        changed = enable_dropout(model, cfg.dropout)
        return [f"Dropout objective: switched dropout on in {changed} places."]


OBJECTIVES: dict[str, Objective] = {
    objective.kind: objective
    for objective in (
        Objective("crop", crop_views),
        SpanObjective("span", span_views),
        DropoutObjective("dropout", dropout_views, same_text=True),
    )
}
"""Every objective by ``objective.kind``; its keys are the menu of ``config.ObjectiveKind``."""


def objective_for(cfg: ObjectiveConfig) -> Objective:
    """The objective a recipe's ``objective`` section names."""
    return _lookup(cfg.kind)


def _lookup(kind: str) -> Objective:
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown view kind {kind!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[kind]


def make_views(
    kind: str, docs: list[str], rng: random.Random, **kwargs
) -> tuple[list[str], list[str], ViewStats]:
    """Make a batch of positive pairs with the view maker of objective ``kind``.

    Args:
        kind: A key of :data:`OBJECTIVES`.
        docs: Documents; empty or whitespace-only ones are dropped and counted.
        rng: Source of randomness, shared across the batch (documents are visited in order,
            so a seeded ``rng`` gives the same views every run).
        **kwargs: Passed on to the view maker (e.g. ``sentences_per_crop``).

    Returns:
        ``(views_a, views_b, stats)``; ``views_a[i]`` and ``views_b[i]`` come from the same
        document, so the pair lists may be shorter than ``docs``.
    """
    maker = _lookup(kind).view_maker
    stats = ViewStats()
    views_a: list[str] = []
    views_b: list[str] = []
    for doc in docs:
        if not isinstance(doc, str) or not doc.strip():
            stats.dropped_empty += 1
            continue
        a, b = maker(doc, rng, stats=stats, **kwargs)
        views_a.append(a)
        views_b.append(b)
    return views_a, views_b, stats
