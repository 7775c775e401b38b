"""Per-item outcomes: what an evaluator may return beside its metrics, so decisions can carry their uncertainty.

One ``ItemOutcomes`` holds, for one benchmark and one model, every scored item's correctness with the cluster it
belongs to (items that share an image or a question are not independent: MME's two questions per image, MMBench's
circular copies of one question) and the stratum it is scored in (MME's subtasks). ``rule`` says how the benchmark's
headline score is computed from the items, so a bootstrap can recompute it exactly inside every resample:

- ``"mean"``: 100 × the share of items answered right (multiple choice, yes/no accuracy);
- ``"circular"``: 100 × the share of clusters whose items are all right (MMBench CircularEval);
- ``"mme"``: per stratum (subtask) acc = share of items right and acc+ = share of clusters (images) all right;
  the score is the mean over strata of (acc + acc+) / 2, i.e. MME's total / (200 × subtasks) × 100;
- ``"f1"``: 100 × the F1 of the "yes" class (POPE), from ``predicted`` and ``truth``.

``chance`` is each item's probability of being right for a uniform random guesser (1 / number of options).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Rule = Literal["mean", "circular", "mme", "f1"]
RULES: tuple[str, ...] = ("mean", "circular", "mme", "f1")


@dataclass(frozen=True)
class ItemOutcomes:
    """One benchmark's per-item results for one model (all arrays aligned with ``items``)."""

    rule: Rule
    items: list[str]
    clusters: list[str]
    correct: np.ndarray  # bool
    chance: np.ndarray  # float: P(right) for a uniform guesser
    strata: list[str] = field(default_factory=list)  # empty: one stratum
    categories: list[str] = field(default_factory=list)  # the benchmark's category of each item; empty: none given
    predicted: np.ndarray | None = None  # f1 rule: the model said "yes" (bool)
    truth: np.ndarray | None = None  # f1 rule: the answer is "yes" (bool)

    def __post_init__(self) -> None:
        n = len(self.items)
        if self.rule not in RULES:
            raise ValueError(f"unknown outcome rule {self.rule!r}; expected one of {', '.join(RULES)}")
        object.__setattr__(self, "correct", np.asarray(self.correct, dtype=bool))
        object.__setattr__(self, "chance", np.asarray(self.chance, dtype=float))
        for name in ("clusters", "correct", "chance"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ItemOutcomes.{name} has {len(getattr(self, name))} entries for {n} items")
        for name in ("strata", "categories"):
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise ValueError(f"ItemOutcomes.{name} has {len(getattr(self, name))} entries for {n} items")
        if self.rule == "f1":
            if self.predicted is None or self.truth is None:
                raise ValueError('rule "f1" needs `predicted` and `truth`')
            object.__setattr__(self, "predicted", np.asarray(self.predicted, dtype=bool))
            object.__setattr__(self, "truth", np.asarray(self.truth, dtype=bool))

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, keep: np.ndarray) -> ItemOutcomes:
        """The outcomes of the items where ``keep`` (a bool mask) is true."""
        return self.take(np.flatnonzero(np.asarray(keep, dtype=bool)))

    def of_categories(self, names: Iterable[str]) -> ItemOutcomes:
        """The outcomes of the items whose category is one of ``names``."""
        return self.subset(np.isin(self.categories, list(names)))

    def take(self, order: np.ndarray) -> ItemOutcomes:
        """The outcomes of the items at positions ``order`` (an integer array), in that order."""
        order = np.asarray(order, dtype=np.intp)
        return ItemOutcomes(
            rule=self.rule,
            items=[self.items[i] for i in order],
            clusters=[self.clusters[i] for i in order],
            correct=self.correct[order],
            chance=self.chance[order],
            strata=[self.strata[i] for i in order] if self.strata else [],
            categories=[self.categories[i] for i in order] if self.categories else [],
            predicted=None if self.predicted is None else self.predicted[order],
            truth=None if self.truth is None else self.truth[order],
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "items": list(self.items),
            "clusters": list(self.clusters),
            "correct": [bool(x) for x in self.correct],
            "chance": [float(x) for x in self.chance],
        }
        if self.strata:
            out["strata"] = list(self.strata)
        if self.categories:
            out["categories"] = list(self.categories)
        if self.predicted is not None and self.truth is not None:
            out["predicted"] = [bool(x) for x in self.predicted]
            out["truth"] = [bool(x) for x in self.truth]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemOutcomes:
        return cls(
            rule=data["rule"],
            items=[str(x) for x in data["items"]],
            clusters=[str(x) for x in data["clusters"]],
            correct=np.array(data["correct"], dtype=bool),
            chance=np.array(data["chance"], dtype=float),
            strata=[str(x) for x in data.get("strata", [])],
            categories=[str(x) for x in data.get("categories", [])],
            predicted=None if "predicted" not in data else np.array(data["predicted"], dtype=bool),
            truth=None if "truth" not in data else np.array(data["truth"], dtype=bool),
        )


Outcomes = dict[str, ItemOutcomes]
"""Benchmark name → its per-item outcomes (the same names as the evaluator's metrics)."""


OUTCOMES_FILE = "outcomes.json"


def write_outcomes(path: Path, outcomes: Outcomes) -> None:
    """Per-item outcomes of an evaluation, beside its result (benchmark → outcomes)."""
    from mixlab.store import atomic_write_json

    atomic_write_json(path, {bench: o.to_json() for bench, o in outcomes.items()})


def read_outcomes(path: Path) -> Outcomes:
    """What ``write_outcomes`` wrote ({} where there is no file)."""
    if not path.is_file():
        return {}
    return {bench: ItemOutcomes.from_json(data) for bench, data in json.loads(path.read_text()).items()}
