"""Shared fixtures: offline Hub, one thread for tiny models, tiny models saved as folders.

Only fixtures live here (pytest injects them by name); what tests import is in
``tests/helpers/``.
"""

from __future__ import annotations

import os
from pathlib import Path

# `auto` precision (the default) is bf16 on some machines and fp32 on others; the tests'
# golden values and exact comparisons are fp32, so `auto` means fp32 in every test and
# every process a test starts (they inherit it). tests/core/test_precision.py unsets it to
# test the detection itself.
os.environ["LASTLAYER_AUTO_PRECISION"] = "float32"

import huggingface_hub
import pytest
import torch
from helpers.tiny import tiny_model, tiny_tokenizer

pytest_plugins = ["helpers.hub"]  # the Hub world and the recording Hub, for hub/ and trust


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME of the test session: what lastlayer caches under it (GGUF files
    dequantized once) stays out of the user's own and is shared by the session's tests."""
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hf_home: Path) -> None:
    """Offline mode and an empty Hub cache: no test waits on the network or sees a cache.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the constants are patched too.
    """
    monkeypatch.setenv("HF_HOME", str(hf_home))
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


@pytest.fixture(scope="module")
def full(saved_models, tmp_path_factory) -> Path:
    """A top-1 full-kind artifact on the saved tiny BERT (untrained: its blocks are the
    base's own copies)."""
    from helpers.artifacts import lora_artifact

    return lora_artifact(saved_models, tmp_path_factory.mktemp("full") / "f", "full", 1)
