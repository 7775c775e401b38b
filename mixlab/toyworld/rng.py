"""Independent, stable random streams: one per (seed, name), so adding a stream changes no other."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    """A numpy Generator derived from the world seed and a stream name (e.g. "train/color_clean")."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def one(rng: np.random.Generator, values: Sequence[str]) -> str:
    """One value, uniformly."""
    return values[int(rng.integers(len(values)))]


def some(rng: np.random.Generator, values: Sequence[str], k: int) -> list[str]:
    """k distinct values in random order."""
    return [values[int(i)] for i in rng.choice(len(values), size=k, replace=False)]


def others(values: Sequence[str], *exclude: str) -> tuple[str, ...]:
    """The values not excluded, in their original order."""
    return tuple(v for v in values if v not in exclude)
