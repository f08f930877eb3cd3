"""Punica's mixes: how each spreads a batch's rows over adapters."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.bench.mixes import MIXES, assign

NAMES = [f"a{i}" for i in range(16)]


def test_each_mix_spreads_rows_as_named():
    assert assign("identical", 16, NAMES) == ["a0"] * 16
    assert Counter(assign("uniform", 16, NAMES)) == {f"a{i}": 4 for i in range(4)}
    assert sorted(assign("distinct", 16, NAMES)) == sorted(NAMES)
    assert assign("distinct-per-head", 64, NAMES) == assign("distinct", 64, NAMES)
    skewed = Counter(assign("skewed", 64, NAMES))
    assert sum(skewed.values()) == 64
    counts = [skewed.get(name, 0) for name in NAMES]
    assert counts == sorted(counts, reverse=True) and counts[0] > 64 / 3
    assert assign("skewed", 64, NAMES) == assign("skewed", 64, NAMES)  # seeded
    assert set(MIXES) >= {"identical", "uniform", "skewed", "distinct"}
    with pytest.raises(ValueError, match="mix"):
        assign("random", 4, NAMES)
