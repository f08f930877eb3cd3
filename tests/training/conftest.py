"""Fixtures of the training tests (a module may define its own ``corpus`` of another size)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.data import medical_sample


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 120 medical abstracts (text + label), as a small jsonl file."""
    return medical_sample(tmp_path_factory.mktemp("data") / "medical.jsonl")
