"""The one budget rule every fraction-based selector follows, so that arms compared "at 20 %" train on equal counts."""

from __future__ import annotations

import math


def target_count(n: int, fraction: float) -> int:
    """floor(fraction · n), as the official COINCIDE and POINTS code (``int(N * ratio)``), with a 1e-9 guard
    against 0.29 · 100 = 28.999…."""
    return int(math.floor(fraction * n + 1e-9))
