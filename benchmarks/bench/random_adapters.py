"""Random adapters for a base: as many LoRA or full artifacts as a benchmark needs.

The project ships four SmolLM2 adapters and one MiniLM adapter; the mixed-batch benchmark
spreads rows over up to 16 different adapters (Punica's "distinct" mix), so it makes the
missing ones. Each is a real artifact (PEFT files + ``lastlayer.json``) on the base a
shipped artifact names, with that artifact's settings (pooling, token limit, LoRA rank),
its own kind and k, and weights moved by seeded noise: an untrained adapter is the
identity (LoRA B is zero), which would let a dropped or mixed-up head go unseen. The
vectors mean nothing; their cost is exactly a trained adapter's.

Artifacts are cached under ``$LASTLAYER_BENCH_ADAPTERS`` (default
``~/.cache/lastlayer/bench-adapters``), by base fingerprint, kind, k and seed, so a second
run loads them instead of making them again.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

CACHE = Path(os.environ.get("LASTLAYER_BENCH_ADAPTERS",
                            Path.home() / ".cache" / "lastlayer" / "bench-adapters"))


def cache_dir() -> Path:
    """Where the random adapters are kept (``$LASTLAYER_BENCH_ADAPTERS`` at import)."""
    return CACHE


def random_adapters(source: str | Path, count: int, kind: str = "lora", top_k: int | None = None,
                    seed: int = 0, root: Path | None = None) -> list[Path]:
    """``count`` random ``kind`` artifacts on the base of the artifact at ``source``.

    Args:
        source: A shipped artifact: its base, embedding settings and LoRA rank are copied.
        count: How many adapters (seeds ``seed`` … ``seed + count − 1``).
        kind: ``lora`` or ``full``.
        top_k: Their k (default: the source's).
        seed: The first seed; adapter ``i`` is a function of ``seed + i`` only.
        root: The cache folder (default :func:`cache_dir`).

    Returns:
        The artifact folders, made now or found in the cache.
    """
    from lastlayer import artifact

    meta = artifact.read(source)
    top_k = top_k or meta.top_k
    folder = (root or cache_dir()) / f"{meta.base.fingerprint}_{kind}-top{top_k}"
    paths = [folder / f"seed{seed + i}" for i in range(count)]
    missing = [p for p in paths if not (p / "lastlayer.json").is_file()]
    if missing:
        _make(source, meta, missing, kind, top_k)
    return paths


def _make(source: str | Path, meta, paths: list[Path], kind: str, top_k: int) -> None:
    """Load the base once, then attach, randomise and save one adapter per path."""
    import torch

    from benchmarks.bench.models import SharedBase, attach_adapter, save_artifact
    from lastlayer import artifact
    from lastlayer.artifact import Layers
    from lastlayer.core.target import model_config_of

    shared = SharedBase(model_config_of(source))
    num_layers = meta.layers.num_layers
    for path in paths:
        seed = int(path.name.removeprefix("seed"))
        cfg = dataclasses.replace(meta.adapter, kind=kind, top_k=top_k)
        with shared.trainable() as encoder:
            torch.manual_seed(seed)  # attach draws LoRA's A from the global generator
            _randomised(attach_adapter(encoder, cfg), kind, seed)
            own = dataclasses.replace(
                meta, name=path.name, adapter=cfg,
                layers=Layers(meta.layers.layer_prefix, num_layers,
                              list(range(num_layers - top_k, num_layers))))
            path.parent.mkdir(parents=True, exist_ok=True)
            save_artifact(encoder.model, path, artifact.side_files(own, None, "", [], ""))


def _randomised(encoder, kind: str, seed: int) -> None:
    """Move the adapter's weights by noise drawn from ``seed``: LoRA's B from zero to
    N(0, 0.02²) (A: PEFT's init, seeded), the full kind's block copies by N(0, 0.01²)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.model.named_parameters():
            if param.requires_grad:
                scale = 0.02 if "lora_B" in name else (0.01 if kind == "full" else 0.0)
                param.add_(scale * torch.randn(param.shape, generator=generator))
