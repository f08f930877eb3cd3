"""Loading bases and adapters: the one place the benchmarks touch lastlayer's model loading.

Every script loads its base models, artifacts and baselines' adapters through these
functions, so that when lastlayer's loading API changes this module is the one to change.
The rules kept here:

- what only embeds goes through lastlayer's inference engine, which never changes its
  base: an artifact as ``lastlayer eval`` opens it (:func:`load_target`), or an adapter's
  head on a base already loaded (:func:`adapter_head`);
- a run that trains gets an encoder of its own on a deep copy of the shared base
  (:meth:`SharedBase.trainable`), the trainable copy lastlayer's training attaches to;
- the PEFT baseline (:func:`add_peft_adapter`) is PEFT's own multi-adapter model, which
  wraps its encoder's model: it is what the engine is measured against.

lastlayer is imported inside the functions: the orchestrating processes of ``speed`` and
``memory`` import this module without importing torch.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lastlayer.config import AdapterConfig, ModelConfig

if TYPE_CHECKING:
    from lastlayer.core.encoder import Encoder, ResolvedModel
    from lastlayer.core.heads import Head
    from lastlayer.core.target import Target


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
    from lastlayer.core.target import model_config_of

    return load_base(model_config_of(artifact))


def load_target(target: str | Path, **model_overrides: Any) -> Target:
    """An artifact (its base + adapter) or a base model on the inference engine, as
    ``lastlayer eval`` opens it (``encode`` as an encoder's)."""
    from lastlayer.core.target import load_target as load

    return load(target, **model_overrides)


def adapter_head(base: Encoder, folder: str | Path, merge: bool = False) -> Head:
    """The head of the artifact at ``folder`` on ``base`` (its private top-k blocks; by
    default unmerged, the computation training measured); ``base`` is left as it is."""
    from lastlayer import artifact
    from lastlayer.core.heads import build_head

    artifact.check_peft_files(folder)  # a damaged folder fails here, naming the file
    return build_head(base.model, folder, artifact.read(folder), merge)


def attach_lora(encoder: Encoder, top_k: int) -> Encoder:
    """Make ``encoder`` trainable with lastlayer's LoRA on its top ``top_k`` blocks."""
    from lastlayer.core.adapters import attach

    return attach(encoder, AdapterConfig(kind="lora", top_k=top_k))


def attach_adapter(encoder: Encoder, cfg: AdapterConfig) -> Encoder:
    """Make ``encoder`` trainable with the adapter ``cfg`` describes (any kind)."""
    from lastlayer.core.adapters import attach

    return attach(encoder, cfg)


def save_artifact(model, out: Path, files: dict[str, str]) -> Path:
    """Save an attached adapter of ``model`` (a ``PeftModel``) as an artifact at ``out``
    (replacing one there) with its side files (``lastlayer.json``, ...)."""
    from lastlayer.core.adapters import save_adapter

    return save_adapter(model, out, files, overwrite=True)


def add_peft_adapter(encoder: Encoder, name: str, artifact: str | Path) -> Encoder:
    """The PEFT baseline: wrap ``encoder``'s model in a ``PeftModel`` holding ``artifact``
    under ``name`` (the first call), or add it to the ``PeftModel`` (later calls).

    This changes ``encoder`` (PEFT's way, the one measured against): give it an encoder
    of its own."""
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
        encoder: the base's encoder (measuring the base, caching its block inputs); never
            trained.
        model: the base's own model (``encoder.model``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.encoder = load_base(cfg)
        self.model = self.encoder.model

    @contextmanager
    def trainable(self) -> Iterator[Encoder]:
        """A training copy for one run: an encoder of its own (the base's settings) on a
        deep copy of the base's model, which training may wrap and change; the shared
        encoder is not touched, whatever the run does."""
        yield dataclasses.replace(self.encoder, model=copy.deepcopy(self.model))
