"""Loading bases and adapters: the one place the benchmarks touch lastlayer's model loading.

Every script loads its base models, artifacts and baselines' adapters through these
functions, so that when lastlayer's loading API changes (an inference engine that never
reassigns ``encoder.model``, say) this module is the one to change. The rule kept here:
a shared base is never changed; a run that trains gets a deep copy of it
(:meth:`SharedBase.trainable`), an adapter to embed with goes onto a copy
(:func:`with_adapter`).

lastlayer is imported inside the functions: the orchestrating processes of ``speed`` and
``memory`` import this module without importing torch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lastlayer.config import AdapterConfig, ModelConfig

if TYPE_CHECKING:
    from lastlayer.core.encoder import Encoder, ResolvedModel


def resolve(name: str | None = None) -> ResolvedModel:
    """Where a base's weights are (local path, Hub cache or packaged copy); ``None``: the
    default base (the packaged all-MiniLM-L6-v2)."""
    from lastlayer.core.encoder import resolve_model

    return resolve_model(ModelConfig() if name is None else ModelConfig(name_or_path=name))


def load_base(cfg: ModelConfig | str, device: str | None = None) -> Encoder:
    """A base model ready to embed (eval mode, frozen): a ``ModelConfig`` or a name."""
    from lastlayer.core.encoder import load_encoder

    cfg = ModelConfig(name_or_path=cfg) if isinstance(cfg, str) else cfg
    return load_encoder(cfg, device=device)


def base_of(artifact: str | Path) -> Encoder:
    """The base an artifact was trained on, with its settings (pooling, max_length, ...)."""
    from lastlayer.core.adapters import model_config_of

    return load_base(model_config_of(artifact))


def load_target(target: str | Path, **model_overrides: Any) -> Encoder:
    """An artifact (its base + adapter) or a base model, as ``lastlayer eval`` loads it."""
    from lastlayer.core.adapters import load_target as load

    return load(target, **model_overrides)


def with_adapter(base: Encoder, artifact: str | Path) -> Encoder:
    """An encoder embedding with ``artifact``'s adapter on a copy of ``base`` (``base`` and
    its model are left as they are)."""
    from lastlayer.core.adapters import load_adapter

    encoder = copy.copy(base)
    encoder.model = copy.deepcopy(base.model)
    return load_adapter(encoder, artifact)


def attach_lora(encoder: Encoder, top_k: int) -> Encoder:
    """Make ``encoder`` trainable with lastlayer's LoRA on its top ``top_k`` blocks."""
    from lastlayer.core.adapters import attach

    return attach(encoder, AdapterConfig(kind="lora", top_k=top_k))


def add_peft_adapter(encoder: Encoder, name: str, artifact: str | Path) -> Encoder:
    """The PEFT baseline: wrap ``encoder``'s model in a ``PeftModel`` holding ``artifact``
    under ``name`` (the first call), or add it to the ``PeftModel`` (later calls)."""
    from peft import PeftModel

    if isinstance(encoder.model, PeftModel):
        encoder.model.load_adapter(str(artifact), adapter_name=name)
    else:
        encoder.model = PeftModel.from_pretrained(encoder.model, str(artifact),
                                                  adapter_name=name)
    return encoder


class SharedBase:
    """A base loaded once and shared by many runs; each run trains a deep copy of it.

    Attributes:
        encoder: the encoder every run uses (outside :meth:`trainable`: the base itself).
        model: the base's own model, never trained.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.encoder = load_base(cfg)
        self.model = self.encoder.model

    @contextmanager
    def trainable(self) -> Iterator[Encoder]:
        """The encoder on a fresh copy of the base for one run; the base again afterwards."""
        self.encoder.model = copy.deepcopy(self.model)
        try:
            yield self.encoder
        finally:
            self.encoder.model = self.model
