"""Typed results of a run: what the pipeline produces and the report reads (report.json is rendered from these)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mixlab.components import Evaluation, Metrics
from mixlab.data import Sample
from mixlab.stats import Comparison, Estimate, Health


@dataclass
class StageEntry:
    """One stage as report.json lists it: name, status, seconds, short key and the facts it recorded."""

    name: str
    status: Literal["done", "cached", "failed"]
    seconds: float
    key: str
    record: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "seconds": self.seconds, "key": self.key, **self.record}


@dataclass
class Replicate:
    """One training seed's model and its evaluation (as reported: every item, or the test part)."""

    seed: int
    model_dir: Path
    evaluation: Evaluation
    score: float


@dataclass
class AlignResult:
    """An alignment pool ([model.align]'s or an arm's own), the samples its selector kept (all without one) and the
    selector's info."""

    pool: list[Sample]
    chosen: list[Sample]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArmResult:
    """One arm: the samples it chose from and trained on, a model per seed and their metrics.

    ``metrics`` and ``score`` are the means over seeds; ``estimate`` is the score with its interval, ``comparison``
    the difference to the run's ``compare_to`` arm (None on that arm itself).
    """

    name: str
    pool: list[Sample]
    chosen: list[Sample]
    replicates: list[Replicate]
    metrics: Metrics
    score: float
    selection: dict[str, Any] = field(default_factory=dict)  # the selector's info (Selection.info)
    estimate: Estimate | None = None
    comparison: Comparison | None = None
    compared_to: str | None = None
    align: AlignResult | None = None  # the arm's own alignment (its `align` key)

    @property
    def model_dir(self) -> Path:
        """The first seed's model."""
        return self.replicates[0].model_dir

    def model_of(self, seed: int) -> Path:
        return next(r.model_dir for r in self.replicates if r.seed == seed)

    @property
    def sources(self) -> dict[str, int]:
        """Samples of each source in the training set, in first-seen order."""
        return dict(Counter(s["source"] for s in self.chosen))


@dataclass
class SoupResult:
    """The merged model of a [soup] section (one per seed, of that seed's ingredients) and its evaluation.

    ``kept`` and ``info`` are the first seed's; ``per_seed`` has each seed's kept list and info."""

    method: str
    ingredients: list[str]
    kept: list[str]
    metrics: Metrics
    score: float
    info: dict[str, Any] = field(default_factory=dict)
    replicates: list[Replicate] = field(default_factory=list)
    per_seed: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunResult:
    """Everything one execution of a recipe produced, finished or not (a failed run keeps what it finished)."""

    recipe: Path
    run_dir: Path
    seeds: list[int] = field(default_factory=list)
    select_on: str = "all"
    stages: list[StageEntry] = field(default_factory=list)
    arms: dict[str, ArmResult] = field(default_factory=dict)
    soup: SoupResult | None = None
    align: AlignResult | None = None  # [model.align]'s pool and selection
    health: dict[str, Health] = field(default_factory=dict)  # benchmark → its signal, noise, chance, ...
    unsplit: list[str] = field(default_factory=list)  # benchmarks reported whole (no per-item outcomes to split)
