"""Artifacts for tests: ``lastlayer.json`` metadata, tiny trained-looking artifacts, and the
artifact folders the project ships (``adapters/``)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import torch

from helpers.data import ROOT
from helpers.models import perturb

MAX_LENGTH = 32  # the tiny artifacts' max_length, in tokens
PREFIX = {"bert": "encoder.layer", "llama": "layers"}  # the tiny models' block stacks


def shipped_artifacts(pattern: str = "*/*") -> list[Path]:
    """Artifact folders ``adapters/<pattern>`` that git tracks, sorted.

    ``make demo`` writes its (~100 MB, full-unfreeze) artifact under ``adapters/medical/``
    too; untracked, it is the user's output, not part of what the project ships. Outside
    a git checkout every artifact found counts.
    """
    found = sorted(p.parent for p in (ROOT / "adapters").glob(f"{pattern}/lastlayer.json"))
    try:
        tracked = subprocess.run(["git", "ls-files", "--", "adapters"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return found
    folders = {(ROOT / name).parent for name in tracked if name.endswith("/lastlayer.json")}
    return [folder for folder in found if folder in folders]


def artifact_meta(base_model: str = "tiny-bert", kind: str = "lora", top_k: int = 2,
                  num_layers: int = 4, max_length: int = 32, prefix: str = "encoder.layer"):
    """A schema-2 ``ArtifactMeta`` for a tiny test artifact (fixed values, local base)."""
    from lastlayer.artifact import ArtifactMeta, BaseWeights, Embedding, Layers, Training

    return ArtifactMeta(
        name="tiny", created="2026-01-01T00:00:00+00:00", lastlayer_version="0.1.0",
        base=BaseWeights(model=base_model, origin="local", fingerprint="0123456789abcdef"),
        embedding=Embedding(pooling="mean", normalize=True, max_length=max_length),
        adapter={"kind": kind, "top_k": top_k, "r": 8, "alpha": 16, "dropout": 0.0,
                 "target_modules": None},
        objective={"kind": "crop", "temperature": 0.05},
        layers=Layers(prefix, num_layers, list(range(num_layers - top_k, num_layers))),
        training=Training(data="data/medical.jsonl", steps=3, final_loss=1.5,
                          view_stats={"documents": 10}),
    )


def _seed_lora_b(model: torch.nn.Module, seed: int) -> None:
    """Set every ``lora_B`` weight to 0.5 * N(0, 1) noise drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def make_artifact(base, out: Path, kind: str = "lora", top_k: int = 2, seed: int = 0,
                  arch: str = "bert", *, noise: str = "trainable",
                  quantization: str | None = None, files: dict[str, str] | None = None,
                  **embedding) -> Path:
    """A trained-looking ``kind`` top-``top_k`` artifact on ``base``, saved to ``out``.

    Untrained, an adapter is the identity (LoRA B is zero) and would hide one that was
    dropped or garbled; the seed moves it, differently per seed.

    Args:
        base: a model folder (loaded at ``MAX_LENGTH`` tokens with ``quantization``), or a
            loaded ``Encoder``: adapted, saved, then given its plain base back.
        noise: how the seed moves the weights. ``"trainable"``: 0.05 * N(0, 1) added to
            every trainable weight (``helpers.models.perturb``). ``"lora_B"``: the global
            generator seeded before attaching (``attach`` draws lora_A from it), then every
            lora_B set to 0.5 * N(0, 1): the whole adapter a function of the seed.
        files: the side files to write (``lastlayer.json``, ...). By default the Embedder
            tests' metadata: :func:`artifact_meta` for ``arch`` named ``out.name``, with the
            base's real fingerprint, ``quantization`` and the ``embedding`` fields given,
            and empty metrics, recipe, history and card.
    """
    from lastlayer import artifact
    from lastlayer.config import AdapterConfig, ModelConfig
    from lastlayer.core.adapters import attach, save_adapter
    from lastlayer.core.encoder import load_encoder

    if noise not in ("trainable", "lora_B"):
        raise ValueError(f"noise must be 'trainable' or 'lora_B', not {noise!r}")
    given = not isinstance(base, Path)
    encoder = base if given else load_encoder(
        ModelConfig(name_or_path=str(base), max_length=MAX_LENGTH, quantization=quantization),
        device="cpu")
    if noise == "lora_B":
        torch.manual_seed(seed)  # attach draws lora_A from the global generator
    encoder = attach(encoder, AdapterConfig(kind=kind, top_k=top_k))
    if noise == "lora_B":
        _seed_lora_b(encoder.model, seed)
    else:
        perturb(encoder.model, seed)
    if files is None:
        meta = artifact_meta(base_model=base.name, kind=kind, top_k=top_k, prefix=PREFIX[arch],
                             max_length=MAX_LENGTH)
        meta = dataclasses.replace(
            meta, name=out.name,
            base=dataclasses.replace(meta.base, fingerprint=encoder.fingerprint,
                                     quantization=quantization),
            embedding=dataclasses.replace(meta.embedding, **embedding),
        )
        files = artifact.side_files(meta, None, "", [], "")
    path = save_adapter(encoder.model, out, files)
    if given:
        encoder.model = encoder.model.unload()  # the base again, for the next artifact
    return path


def lora_artifact(saved_models: dict[str, Path], out: Path, kind: str = "lora",
                  top_k: int = 2) -> Path:
    """Save an untrained ``kind`` top-``top_k`` artifact on the saved tiny BERT at ``out``."""
    from lastlayer.config import AdapterConfig, ModelConfig
    from lastlayer.core.adapters import attach, save_adapter
    from lastlayer.core.encoder import load_encoder

    base = saved_models["bert"]
    encoder = load_encoder(ModelConfig(name_or_path=str(base), max_length=32), "cpu")
    attach(encoder, AdapterConfig(kind=kind, top_k=top_k))
    meta = artifact_meta(str(base), kind=kind, top_k=top_k, num_layers=4, max_length=32)
    meta = dataclasses.replace(meta, base=dataclasses.replace(
        meta.base, fingerprint=encoder.fingerprint))
    return save_adapter(encoder.model, out, files={"lastlayer.json": meta.to_json()})
