"""The built-in `random` and `fraction` selectors, on a small pool of two sources."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from mixlab.errors import UserError
from mixlab.plugins.selectors.fraction import FractionSelector
from mixlab.plugins.selectors.random import RandomSelector

POOL = [{"id": f"{src}/{i}", "source": src} for src in ("a", "b") for i in range(10)]  # a/0..a/9, b/0..b/9
CTX = SimpleNamespace(seed=3)


def select(cls, scores=None, **options):
    return cls(cls.Options(**options), "sel").select(POOL, scores or {}, CTX)


def test_random_fraction_is_seeded_and_sized():
    first = select(RandomSelector, fraction=0.3)
    assert len(first.ids) == 6 and first.ids == select(RandomSelector, fraction=0.3).ids
    assert first.ids != select(RandomSelector, fraction=0.3, seed=99).ids


def test_random_count_per_source_is_stratified():
    ids = select(RandomSelector, count=8, per_source=True).ids
    assert sum(i.startswith("a/") for i in ids) == 4 and sum(i.startswith("b/") for i in ids) == 4


def test_random_needs_exactly_one_budget():
    with pytest.raises(ValidationError, match="exactly one"):
        RandomSelector.Options(fraction=0.5, count=3)


def test_fraction_keeps_lowest_and_highest():
    scores = {"ppl": np.arange(20, dtype=float)[::-1]}  # a/0 has the highest value, b/9 the lowest
    assert select(FractionSelector, scores, column="ppl", fraction=0.1).ids == ["b/8", "b/9"]
    assert select(FractionSelector, scores, column="ppl", fraction=0.1, keep="highest").ids == ["a/0", "a/1"]


def test_fraction_per_source_and_threshold():
    scores = {"ppl": np.arange(20, dtype=float)}
    assert select(FractionSelector, scores, column="ppl", fraction=0.2, per_source=True).ids == [
        "a/0",
        "a/1",
        "b/0",
        "b/1",
    ]
    assert select(FractionSelector, scores, column="ppl", threshold=2.0).ids == ["a/0", "a/1", "a/2"]


def test_fraction_unknown_column_is_a_user_error():
    with pytest.raises(UserError, match="no score column 'loss'.*ppl"):
        select(FractionSelector, {"ppl": np.zeros(20)}, column="loss", fraction=0.5)
