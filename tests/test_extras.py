"""Optional extras: a missing library is named with the extra that installs it (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lastlayer.cli import main
from lastlayer.config import ModelConfig
from lastlayer.core.encoder import load_encoder, quantization_config
from lastlayer.corpus import read_labelled
from lastlayer.evaluation.datasets import read_splits
from lastlayer.evaluation.plots import plot_probe
from lastlayer.extras import MissingExtraError, require


def missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as if the package were not installed (name submodules
    too: one imported earlier in the session would still be found in ``sys.modules``)."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "plot", "x") is sys.modules["json"]
    missing(monkeypatch, "matplotlib", "matplotlib.pyplot")  # as if never installed
    with pytest.raises(MissingExtraError) as err:
        require("matplotlib.pyplot", "plot", "lastlayer probe (drawing probe.png)")
    assert str(err.value) == ("lastlayer probe (drawing probe.png) needs matplotlib, which is "
                              "not installed: pip install 'lastlayer[plot]'")
    assert isinstance(err.value, ImportError)


def test_probe_without_matplotlib_exits_2_before_loading_anything(monkeypatch, capsys):
    missing(monkeypatch, "matplotlib")
    # Neither the model nor the data exist: the extra is checked first, before minutes of work.
    assert main(["probe", "nobody/nothing-here", "--data", "missing.jsonl"]) == 2
    assert "pip install 'lastlayer[plot]'" in capsys.readouterr().err
    with pytest.raises(MissingExtraError, match=r"lastlayer\[plot\]"):
        plot_probe({"layers": []}, "probe.png")


def test_parquet_without_pyarrow_names_the_datasets_extra(monkeypatch, tmp_path):
    path = tmp_path / "corpus.parquet"
    path.write_bytes(b"PAR1")  # never opened: the import fails first
    missing(monkeypatch, "pyarrow", "pyarrow.parquet")
    with pytest.raises(MissingExtraError, match=r"corpus\.parquet \(parquet\) needs pyarrow.*"
                       r"lastlayer\[datasets\]"):
        read_labelled(path)
    with pytest.raises(MissingExtraError, match=r"lastlayer\[datasets\]"):
        read_splits(path)


def test_save_to_disk_folder_without_datasets_names_the_extra(monkeypatch, tmp_path):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "state.json").write_text("{}", encoding="utf-8")
    missing(monkeypatch, "datasets")
    with pytest.raises(MissingExtraError, match=r"needs datasets.*lastlayer\[datasets\]"):
        read_labelled(folder)


def test_eval_cli_maps_a_missing_extra_to_exit_2(monkeypatch, tmp_path, capsys, saved_models):
    path = tmp_path / "labelled.parquet"
    path.write_bytes(b"PAR1")
    missing(monkeypatch, "pyarrow", "pyarrow.parquet")
    assert main(["eval", str(saved_models["bert"]), "--data", str(path)]) == 2
    assert "pip install 'lastlayer[datasets]'" in capsys.readouterr().err


def test_quantization_without_bitsandbytes_names_the_quant_extra(monkeypatch):
    missing(monkeypatch, "bitsandbytes")
    for kind in ("8bit", "4bit"):
        with pytest.raises(MissingExtraError, match=rf"model.quantization={kind} needs "
                           r"bitsandbytes.*lastlayer\[quant\]"):
            quantization_config(kind, None)
    assert quantization_config(None, None) is None


def test_unquantized_base_loads_without_bitsandbytes(monkeypatch, saved_models: dict[str, Path]):
    missing(monkeypatch, "bitsandbytes")
    enc = load_encoder(ModelConfig(name_or_path=str(saved_models["bert"]), max_length=16),
                       device="cpu")
    assert enc.encode(["a b c"], progress=False).shape[0] == 1
