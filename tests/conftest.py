"""Shared fixtures: offline Hub, one thread for tiny models, tiny models saved as folders."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import huggingface_hub
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MEDICAL = ROOT / "data" / "medical_abstracts" / "medical_abstracts.jsonl.gz"


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


def medical_sample(path: Path, docs: int = 120) -> Path:
    """Write the first ``docs`` shipped medical abstracts (text + label) to a jsonl file."""
    with gzip.open(MEDICAL, "rt", encoding="utf-8") as src:
        lines = [next(src) for _ in range(docs)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records as JSON lines (gzipped when the name ends in .gz); return the path."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline mode and an empty Hub cache: no test waits on the network or sees a cache.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the constants are patched too.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(autouse=True)
def one_thread(request: pytest.FixtureRequest):
    """Tiny models gain nothing from intra-op threads, and on a busy machine they spin.

    Tests marked ``slow`` run real models and keep all threads.
    """
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny 4-layer BERT and Llama saved like downloaded model folders (tiny-bert, tiny-llama)."""
    root = tmp_path_factory.mktemp("models")
    folders = {}
    for arch in ("bert", "llama"):
        folder = root / f"tiny-{arch}"
        tiny_model(arch, num_layers=4).save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        folders[arch] = folder
    return folders
