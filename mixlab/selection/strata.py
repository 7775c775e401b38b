"""Grouping a pool by source, for selectors that can apply their rule within each source."""

from __future__ import annotations

from mixlab.data import Sample


def strata(samples: list[Sample], per_source: bool) -> list[list[int]]:
    """Row indices grouped by source (one group holding every row when ``per_source`` is off)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s["source"] if per_source else "", []).append(i)
    return list(groups.values())
