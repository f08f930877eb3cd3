"""The import contracts of pyproject.toml ([tool.importlinter]) hold on this checkout.

Imports point down only: cli > training | inference > evaluation > core > config : corpus :
artifact, and the base imports no deep-learning library. A failure prints import-linter's
report, which names every import chain that breaks a contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def lint(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the ``lastlayer`` package under ``root`` with its pyproject.toml."""
    pytest.importorskip("importlinter", reason="pip install -e '.[dev]' (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}{result.stderr}"
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    # The contracts must be able to fail: core importing training is reported, by chain.
    shutil.copytree(ROOT / "lastlayer", tmp_path / "lastlayer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    layers = tmp_path / "lastlayer" / "core" / "layers.py"
    layers.write_text(layers.read_text(encoding="utf-8")
                      + "\nfrom lastlayer.training import loss  # noqa: E402\n", encoding="utf-8")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "lastlayer.core is not allowed to import lastlayer.training" in result.stdout
    assert "lastlayer.core.layers -> lastlayer.training.loss" in result.stdout
    assert "1 kept, 1 broken" in result.stdout
