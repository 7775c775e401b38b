"""Which decoder layers an activations embedding reads by default (light: `validate` uses it too)."""

from __future__ import annotations

import math


def default_layers(n_layers: int, count: int = 5, depth: float = 5 / 6) -> list[int]:
    """`count` evenly spaced 0-indexed layers up to `depth` of the stack: [3, 7, 11, 15, 19] for 24 layers
    (COINCIDE's choice), [4, 10, 15, 20, 26] for 32, [0, 1] for 2; duplicates after clipping are dropped."""
    picks = {
        min(max(int(math.floor((k + 1) * n_layers * depth / count - 1 + 0.5)), 0), n_layers - 1) for k in range(count)
    }
    return sorted(picks)
