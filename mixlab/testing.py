"""A kit for testing plugins: a run context that needs no pipeline, and helpers to call a component in one line.

    from mixlab.testing import StubContext, build, samples

    def test_my_scorer(tmp_path):
        ctx = StubContext(tmp_path)
        columns = build(MyScorer, threshold=2).score(samples(5), ctx)
        assert columns["length"].shape == (5,)

``StubContext`` implements ``mixlab.components.RunContext``. It trains and evaluates only if given functions for
that (``train=`` and ``evaluate=``); everything a plugin logs, records and reports as progress is kept for
assertions (``logs``, ``records``, ``progress_totals``, ``advanced``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mixlab.components import Component, Evaluation, Metrics, Trial
from mixlab.data import Sample
from mixlab.metrics import aggregate
from mixlab.store import content_hash

if TYPE_CHECKING:
    from mixlab.stats import Comparison

C = TypeVar("C", bound=Component)


class StubContext:
    """A RunContext for unit tests: caches under ``run_dir``, calls recorded, training and evaluation by stand-ins."""

    def __init__(
        self,
        run_dir: Path | None = None,
        *,
        seed: int = 0,
        seeds: list[int] | None = None,
        base_model: Path | None = None,
        train: Callable[[list[Sample], str], Path] | None = None,
        evaluate: Callable[[Path, str], Metrics] | None = None,
    ):
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="mixlab-test-"))
        self.seeds = seeds or [seed]
        self.seed = seed  # the run's seed, as in a real run; a training sees its replicate's seed
        self._base_model = base_model
        self._train = train
        self._evaluate = evaluate
        self.logs: list[str] = []
        self.records: dict[str, Any] = {}
        self.progress_totals: list[int | None] = []
        self.advanced: list[int] = []
        self.trained: list[str] = []  # tags, in order
        self.evaluated: list[str] = []  # tags, in order

    @property
    def base_model(self) -> Path:
        if self._base_model is None:
            raise RuntimeError("this StubContext has no base model: pass base_model=...")
        return self._base_model

    def train(self, samples: list[Sample], tag: str, overrides: dict[str, Any] | None = None) -> Path:
        if self._train is None:
            raise RuntimeError("this StubContext cannot train: pass train=lambda samples, tag: model_dir")
        self.trained.append(tag)
        return self._train(samples, tag)

    def train_many(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Path]:
        return [self.train(samples, tag, overrides) for samples, tag in jobs]

    def evaluate(self, model_dir: Path, tag: str) -> Metrics:
        if self._evaluate is None:
            raise RuntimeError("this StubContext cannot evaluate: pass evaluate=lambda model_dir, tag: metrics")
        self.evaluated.append(tag)
        return self._evaluate(model_dir, tag)

    def aggregate(self, metrics: Metrics) -> float:
        return aggregate(metrics)

    def trials(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Trial]:
        """Each job trained and evaluated once per seed of ``seeds`` (the stand-ins see the seed in ``self.seed``)."""
        out, run_seed = [], self.seed
        for samples, tag in jobs:
            evaluations, dirs = {}, {}
            for seed in self.seeds:
                self.seed = seed
                model_dir = self.train(samples, tag, overrides)
                evaluations[seed] = Evaluation(self.evaluate(model_dir, tag))
                dirs[seed] = str(model_dir)
            self.seed = run_seed
            score = sum(self.aggregate(e.metrics) for e in evaluations.values()) / len(evaluations)
            out.append(Trial(tag, evaluations, dirs, score))
        return out

    def compare(self, a: Trial, b: Trial) -> Comparison:
        """A − B over the shared seeds, with mixlab's interval (seed noise only: stand-ins give no item outcomes)."""
        from mixlab.decisions import Decisions
        from mixlab.sections import RunSection

        seeds = [s for s in a.evaluations if s in b.evaluations]
        decisions = Decisions(RunSection(name="test"))
        return decisions.compare([a.evaluations[s] for s in seeds], [b.evaluations[s] for s in seeds])

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        self.progress_totals.append(total)

        def advance(n: int = 1, *, completed: int | None = None) -> None:
            self.advanced.append(n if completed is None else completed)

        yield advance

    def cache_dir(self, kind: str, key: Any) -> Path:
        folder = self.run_dir / "cache" / kind / content_hash(key)[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def record(self, **info: Any) -> None:
        self.records.update(info)

    def log(self, message: str) -> None:
        self.logs.append(message)


def build(cls: type[C], label: str | None = None, base_dir: Path | None = None, **options: Any) -> C:
    """A component built as the pipeline builds it, from keyword options validated by its own Options model."""
    return cls(cls.Options.model_validate(options), label or cls.name, base_dir)


def samples(n: int, source: str = "src", category: str | None = None, answer: str = "yes") -> list[Sample]:
    """``n`` text-only samples of one source, ids ``<source>/<i>``, each a one-turn question and answer."""
    return [
        {
            "id": f"{source}/{i}",
            "source": source,
            "category": category,
            "image": None,
            "conversations": [{"from": "human", "value": f"question {i}?"}, {"from": "gpt", "value": answer}],
            "noisy": None,
        }
        for i in range(n)
    ]
