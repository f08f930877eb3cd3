"""Open what a command names (an adapter artifact, a Hub adapter, or a base model) on the engine.

``eval``, ``probe`` and ``export`` take one target and embed with it; :func:`load_target`
gives them a :class:`Target`: the base loaded once, and for an adapter its head on the
inference engine (:mod:`lastlayer.core.engine`), the same head the ``Embedder`` runs. The
base model is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lastlayer import artifact
from lastlayer.artifact import ArtifactError, ArtifactMeta
from lastlayer.config import ConfigError, ModelConfig, from_dict
from lastlayer.core.encoder import Encoder, load_encoder
from lastlayer.core.engine import Engine, Head
from lastlayer.core.resolve import ModelNotFoundError, ResolvedModel

ADAPTER = "adapter"
"""The name a target's adapter has on its engine."""


def model_config_of(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` an artifact was trained with (base id, pooling, max_length, ...).

    A Hub base is pinned to the commit it was trained on when that is known.
    """
    meta = artifact.read(path)
    base, emb = meta.base, meta.embedding
    gguf = base.file if base.dequantized_gguf and base.origin != "package" else None
    settings = {
        "name_or_path": base.model, "revision": base.revision or base.commit,
        "gguf_file": gguf, "pooling": emb.pooling, "normalize": emb.normalize,
        "max_length": emb.max_length, "dtype": base.dtype, "quantization": base.quantization,
    }
    try:
        return from_dict(ModelConfig, settings)
    except ConfigError as err:
        raise ArtifactError(f"{Path(path) / artifact.METADATA}: {err}") from None


@dataclass
class Target:
    """A base model, or a base and one adapter, on the inference engine.

    ``encode`` has :meth:`Encoder.encode`'s signature, so evaluation takes either.

    Attributes:
        engine: The engine over the base (``engine.encoder``: the base itself).
        head: The adapter's head (None: the base alone).
        meta: The adapter's ``lastlayer.json`` (None: the base alone).
        folder: The artifact folder (a Hub adapter's cached snapshot), or None.
    """

    engine: Engine
    head: Head | None = None
    meta: ArtifactMeta | None = None
    folder: Path | None = None

    @property
    def encoder(self) -> Encoder:
        """The base encoder (its model is never changed)."""
        return self.engine.encoder

    @property
    def pooling(self) -> str:
        return self.head.pooling if self.head else self.encoder.pooling

    @property
    def normalize(self) -> bool:
        return self.head.normalize if self.head else self.encoder.normalize

    @property
    def max_length(self) -> int:
        return self.head.max_length if self.head else self.encoder.max_length

    @property
    def resolved(self) -> ResolvedModel | None:
        return self.encoder.resolved

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint

    @property
    def tokenizer(self):
        return self.encoder.tokenizer

    def encode(self, texts, batch_size: int = 32, progress: bool = True,
               desc: str = "embed") -> Tensor:
        """Embed ``texts`` with the adapter (or the base): a ``(N, d)`` float32 CPU tensor,
        rows in the order of ``texts``, longest texts batched first."""
        texts = list(texts)
        if not texts:
            return torch.empty(0, 0)
        heads = {ADAPTER: self.head} if self.head else {}
        key = ADAPTER if self.head else None
        result = self.engine.embed(texts, [key] * len(texts), heads, batch_size,
                                   progress=progress, desc=desc)
        return torch.from_numpy(result.vectors)


def load_target(target: str | Path, merge: bool = False, **model_overrides) -> Target:
    """An adapter (it has ``lastlayer.json``) -> its base + its head; else a base model.

    Args:
        target: An artifact folder, a Hub adapter ``ORG/NAME[@REVISION]``
            (:func:`lastlayer.hub.adapter_folder`), a base model's Hub id
            (``@REVISION`` pins it too), or a local model folder.
        merge: LoRA only: run the adapter merged into private copies of its blocks. The
            default (unmerged) is the computation training measured, bit for bit.
        model_overrides: ``ModelConfig`` fields to change (e.g. ``max_length=256``).

    Raises:
        ArtifactError: ``target`` is a damaged artifact, or a PEFT adapter (folder or Hub
            repo) without ``lastlayer.json`` (nothing says how to pool it).
    """
    from lastlayer import hub

    if not artifact.is_artifact(target) and (Path(target) / artifact.PEFT_CONFIG).is_file():
        raise ArtifactError(
            f"{target} holds a PEFT adapter but no {artifact.METADATA}, so it is not a "
            "lastlayer artifact: load it with peft.PeftModel.from_pretrained, or train a "
            "lastlayer adapter (lastlayer train) to get one."
        )
    folder = hub.adapter_folder(target)
    if folder is None:
        local = Path(target).expanduser().exists()
        name, revision = (str(target), None) if local else hub.split_revision(str(target))
        config = ModelConfig(name_or_path=name, revision=revision)
        try:
            encoder = load_encoder(replace(config, **model_overrides), for_artifact=False)
            return Target(Engine(encoder))
        except ModelNotFoundError as err:
            if local or hub.parse_ref(str(target)) is None:
                raise
            raise ModelNotFoundError(f"{target} is neither a lastlayer adapter in the Hugging "
                                     f"Face cache nor a loadable base model: {err}") from None
    return adapter_target(folder, merge=merge, **model_overrides)


def downloaded(folder: str | Path) -> bool:
    """Whether ``folder`` lies in the Hugging Face cache (a Hub adapter's snapshot)."""
    from huggingface_hub import constants

    return Path(folder).resolve().is_relative_to(Path(constants.HF_HUB_CACHE).resolve())


def check_downloaded(meta: ArtifactMeta, source: str, model_overrides: dict[str, Any]) -> None:
    """Refuse a downloaded adapter whose ``lastlayer.json`` would make lastlayer read a path.

    A stranger writes those strings: the base it names must be a Hub id (never a folder of
    this machine, an absolute or a ``..`` path) unless the caller names the base itself
    (``name_or_path``, e.g. ``lastlayer export --base``), and a GGUF file name must be a
    plain name inside the base's repo.

    Raises:
        ArtifactError: Naming the field and what to do.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    base = meta.base
    if "name_or_path" not in model_overrides:
        try:
            validate_repo_id(base.model)
        except HFValidationError:
            raise ArtifactError(
                f"{source}: its {artifact.METADATA} names the base {base.model!r}, which is not "
                "a Hub id; lastlayer never uses a downloaded adapter's strings as paths. Load "
                "the base yourself (lastlayer export --base FOLDER, or Embedder(FOLDER)"
                ".load(...))."
            ) from None
    if base.file and (Path(base.file).is_absolute() or ".." in Path(base.file).parts
                      or "\\" in base.file):
        raise ArtifactError(f"{source}: its {artifact.METADATA} names the base file "
                            f"{base.file!r}, which is not a plain file name in the base's repo; "
                            "it is refused.")


def adapter_target(folder: str | Path, merge: bool = False, device: str | None = None,
                   **model_overrides) -> Target:
    """The artifact at ``folder`` on its base: see :func:`load_target`.

    ``model_overrides`` change the base's loading (``name_or_path`` of a local copy, ...);
    ``max_length``, ``pooling`` and ``normalize`` change the adapter's own settings too.
    """
    artifact.check_peft_files(folder)  # a damaged folder fails here, naming the file
    meta = artifact.read(folder)
    if downloaded(folder):  # a stranger's strings are never paths
        check_downloaded(meta, str(folder), model_overrides)
    config = replace(model_config_of(folder), **model_overrides)
    engine = Engine(load_encoder(config, device, for_artifact=False))
    head = engine.build_head(folder, meta, merge)
    # the artifact's settings, unless overridden (as the adapted encoder's always were)
    head = replace(head, pooling=config.pooling, normalize=config.normalize,
                   max_length=config.max_length)
    return Target(engine, head, meta, Path(folder))
