"""The import contracts of pyproject.toml ([tool.importlinter]) hold on this checkout.

Imports point down only: cli > training | inference > evaluation > core > config : corpus :
artifact; the base imports no deep-learning library; and no package has an import circle
inside it (training's modules included). A failure prints import-linter's report, which
names every import chain that breaks a contract. Without import-linter these tests fail,
never skip: the architecture check must not go quiet outside ``make test``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import ROOT

LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
CONTRACTS = 3


def lint(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the ``lastlayer`` package under ``root`` with its pyproject.toml."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package and its pyproject.toml, ``line`` appended to ``module``'s file."""
    shutil.copytree(ROOT / "lastlayer", tmp_path / "lastlayer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # noqa: E402\n",
                    encoding="utf-8")
    return tmp_path


def test_import_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}{result.stderr}"
    assert f"{CONTRACTS} kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    # The contracts must be able to fail: core importing training is reported, by chain
    # (and, training importing core, it is a circle between lastlayer's packages too).
    root = copy_with(tmp_path, "lastlayer.core.layers", "from lastlayer.training import loss")
    result = lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "lastlayer.core is not allowed to import lastlayer.training" in result.stdout
    assert "lastlayer.core.layers -> lastlayer.training.loss" in result.stdout
    assert f"{CONTRACTS - 2} kept, 2 broken" in result.stdout


def test_a_circle_inside_training_breaks_the_acyclic_contract(tmp_path):
    # What training had: choose_k importing the loop's module (in a function) while the
    # orchestration imports choose_k. The layers contract cannot see it; this one does.
    root = copy_with(tmp_path, "lastlayer.training.choose_k",
                     "def _circle():\n    from lastlayer.training.run import run")
    result = lint(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No cycles are allowed in lastlayer.training." in result.stdout
    assert ".choose_k -> .run (1 import)" in result.stdout  # the dependency to remove
    assert f"{CONTRACTS - 1} kept, 1 broken" in result.stdout
