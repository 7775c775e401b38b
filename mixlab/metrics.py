"""An arm's average score over its benchmarks: the number arms are compared by."""

from __future__ import annotations

from mixlab.components import Metrics


def aggregate(metrics: Metrics) -> float:
    """Mean of each benchmark's 0-100 ``score``."""
    values = [m["score"] for m in metrics.values() if "score" in m]
    return sum(values) / len(values) if values else 0.0
