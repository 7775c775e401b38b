"""The interfaces plugin classes implement, and the run context that the pipeline hands them.

Every component class has a ``name`` (what recipes write in ``type = "..."``) and an ``Options`` pydantic model
(unknown keys are errors) that validates its recipe section. The pipeline builds it as ``cls(options, label)``,
where ``label`` is the recipe's name for that section.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, Self

from pydantic import AfterValidator, BaseModel, ConfigDict

from mixlab.paths import expand_user

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    import numpy as np

    from mixlab.data import Sample
    from mixlab.outcomes import ItemOutcomes
    from mixlab.stats import Comparison

KINDS = ("source", "scorer", "selector", "trainer", "evaluator", "merger")

MAX_SEED = 2**32 - 1
"""Seeds go to numpy, torch and Python's random: 0 ≤ seed ≤ 2**32 - 1 suits all three."""


def seed_in_range(seed: int) -> int:
    """The seed, or a ValueError (a located recipe problem) when numpy, torch or random would refuse it."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError("is out of range: use an integer from 0 to 2**32 - 1")
    return seed


Seed = Annotated[int, AfterValidator(seed_in_range)]
"""An option that is a seed (the run's, a trainer's, a selector's, a toy world's)."""

Metrics = dict[str, dict[str, float]]
"""Benchmark name → metric name → value. Each benchmark has a ``score`` on a 0-100 scale."""


class Options(BaseModel):
    """Base for a component's options: unknown keys are errors, no value changes type ("8" is not an int; an int is
    still a float), and no number is NaN or infinite. Recipes are validated with lists accepted for tuples, and the
    same strict scalars."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def loose_option_tables(options: type[BaseModel]) -> list[str]:
    """The fields (dotted paths) of an options model whose values are pydantic models not derived from `Options`,
    at any depth and inside lists, dicts and optionals (each model looked into once, at its first field): a misspelt
    key in such a table would be dropped silently."""
    found: list[str] = []
    seen: set[type] = set()

    def models_in(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in getattr(annotation, "__args__", ()) for m in models_in(arg)]

    def walk(model: type[BaseModel], prefix: str) -> None:
        seen.add(model)
        for name, info in model.model_fields.items():
            for inner in models_in(info.annotation):
                if not issubclass(inner, Options):
                    found.append(prefix + name)
                if inner not in seen:
                    walk(inner, f"{prefix}{name}.")

    walk(options, "")
    return found


class Component:
    """Common base: a registered name, an options model, and the section label it was built from."""

    kind: ClassVar[str]
    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    uses_seed: ClassVar[bool] = False  # reads ``ctx.seed``: its stage key then covers the run's seed
    path_options: ClassVar[frozenset[str]] = frozenset()
    """Options that name files or folders of this machine: ``validate --no-path-checks`` leaves out the problems
    ``check()`` finds with them (and with what they need installed)."""

    def __init__(self, options: BaseModel, label: str, base_dir: Path | None = None):
        self.options = options
        self.label = label
        self.base_dir = base_dir or Path.cwd()

    def with_options(self, overrides: dict[str, Any] | None) -> Self:
        """This component with ``overrides`` (an arm's `trainer` table) in its options, validated by its model."""
        if not overrides:
            return self
        merged = {**self.options.model_dump(exclude_unset=True), **overrides}
        return type(self)(type(self.options).model_validate(merged), self.label, self.base_dir)

    def resolve(self, path: str | Path) -> Path:
        """A path from the options, relative to the recipe's folder."""
        path = expand_user(path)
        return path if path.is_absolute() else (self.base_dir / path)

    def fingerprint(self) -> str:
        """Extra cache-key material beyond the recipe section (e.g. input file stats); '' if none."""
        return ""

    def check(self) -> list[tuple[tuple, str]]:
        """Problems ``validate`` can find without running: (key path inside the section, what is wrong and what to
        do), e.g. ``(("path",), "file data.json does not exist ...")``. Paths, files and option bounds; none by default.
        """
        return []


class Source(Component):
    """Loads samples. ``provides()`` names the sources it yields (default: its label)."""

    kind = "source"

    def provides(self) -> list[str]:
        return [self.label]

    def load(self, ctx: RunContext) -> list[Sample]:
        """Samples with ``source`` set to one of ``provides()``; ids unique within that source."""
        raise NotImplementedError


class Scorer(Component):
    """Computes per-sample score columns (1-D) or embeddings (2-D), row-aligned with the samples."""

    kind = "scorer"

    def score(self, samples: list[Sample], ctx: RunContext) -> dict[str, np.ndarray]:
        raise NotImplementedError


@dataclass
class Selection:
    """The ids an arm trains on, plus anything worth reporting (goes to report.json)."""

    ids: list[str]
    info: dict[str, Any] = field(default_factory=dict)


class Selector(Component):
    """Chooses sample ids from the arm's samples, given the scores of the scorers it names.

    A selector that trains or evaluates models through the context (``ctx.train``, ``ctx.evaluate``) sets
    ``trains_models = True``: its stage key then covers the trainer's and evaluators' sections and code, the run's
    seeds and the rules that turn evaluations into decisions.
    """

    kind = "selector"
    trains_models: ClassVar[bool] = False

    def select(self, samples: list[Sample], scores: dict[str, np.ndarray], ctx: RunContext) -> Selection:
        raise NotImplementedError


@dataclass
class TrainResult:
    model_dir: Path
    stats: dict[str, Any] = field(default_factory=dict)


class Trainer(Component):
    """Fine-tunes ``base_model`` on samples; writes a standard HF model directory under ``work_dir``."""

    kind = "trainer"

    def train(
        self,
        samples: list[Sample],
        base_model: Path,
        work_dir: Path,
        ctx: RunContext,
        overrides: dict[str, Any] | None = None,
    ) -> TrainResult:
        raise NotImplementedError


@dataclass
class Evaluation:
    """What an evaluator returns: metrics per benchmark, and where it can, per-item outcomes (mixlab.outcomes)."""

    metrics: Metrics
    outcomes: dict[str, ItemOutcomes] = field(default_factory=dict)


@dataclass
class Trial:
    """One mixture trained once per seed of the run and evaluated on the decision part (``ctx.trials``)."""

    tag: str
    evaluations: dict[int, Evaluation]  # seed → evaluation (metrics and per-item outcomes)
    model_dirs: dict[int, str] = field(default_factory=dict)  # seed → model folder, run-relative where possible
    score: float = 0.0  # the mean over seeds of the run's average score

    @property
    def metrics(self) -> Metrics:
        """Each benchmark's ``score``, averaged over seeds."""
        runs = list(self.evaluations.values())
        benches = [b for b in runs[0].metrics if all("score" in e.metrics.get(b, {}) for e in runs)]
        return {b: {"score": sum(e.metrics[b]["score"] for e in runs) / len(runs)} for b in benches}


class Evaluator(Component):
    """Scores a model directory: benchmark → metrics, each with a 0-100 ``score``; either plain ``Metrics`` or an
    ``Evaluation`` that adds per-item outcomes (they give the report item-level confidence intervals)."""

    kind = "evaluator"

    def benchmark_names(self) -> list[str] | None:
        """The benchmarks ``evaluate`` will report, where they are known without running (``validate`` then checks
        the names in ``[run] weights`` and ``exclude``); None when they are not."""
        return None

    def item_categories(self) -> dict[str, set[str]] | None:
        """Each benchmark's item categories (what a ``"BENCH/CATEGORY"`` entry of Individual Select's
        ``category_items`` can name), where known without running (``validate`` then checks those entries); None when
        they are not."""
        return None

    def evaluate(self, model_dir: Path, work_dir: Path, ctx: RunContext) -> Metrics | Evaluation:
        raise NotImplementedError


def reported_name(bench: str, label: str, taken: Collection[str]) -> str:
    """What a run calls an evaluator's benchmark: its own name, or ``label/bench`` where an earlier evaluator of the
    run already reported that name."""
    return bench if bench not in taken else f"{label}/{bench}"


@dataclass
class MergeResult:
    model_dir: Path
    kept: list[str]
    info: dict[str, Any] = field(default_factory=dict)


class Merger(Component):
    """Combines checkpoints (name → model dir) into one model directory under ``work_dir``."""

    kind = "merger"

    def evaluates_models(self) -> bool:
        """Whether this merge judges models through ``ctx.evaluate`` (a greedy soup does): its stage key then covers
        the evaluators and the decision rules. True unless a merger says otherwise."""
        return True

    def merge(self, ingredients: dict[str, Path], work_dir: Path, ctx: RunContext) -> MergeResult:
        raise NotImplementedError


class RunContext(Protocol):
    """What a run offers components. Selectors and mergers that must train or evaluate use this.

    The pipeline's context and a worker process's context both implement it; in a worker, ``train``,
    ``train_many`` and ``evaluate`` raise (a training job does not start other trainings).
    """

    run_dir: Path
    seed: int

    @property
    def base_model(self) -> Path:
        """The recipe's model, built and aligned (available after the model stage)."""
        ...

    def train(self, samples: list[Sample], tag: str, overrides: dict[str, Any] | None = None) -> Path:
        """Train the recipe's trainer on samples from the base model; cached by content. Returns the model dir."""
        ...

    def train_many(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Path]:
        """Train several independent (samples, tag) mixtures, at once where [run.executor] allows; cached."""
        ...

    def evaluate(self, model_dir: Path, tag: str) -> Metrics:
        """Run the recipe's evaluators on a model dir; cached by content."""
        ...

    def aggregate(self, metrics: Metrics) -> float:
        """The 0-100 average over benchmarks that arms are compared by ([run] weights and exclude applied)."""
        ...

    def trials(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Trial]:
        """Each (samples, tag) mixture trained once per seed of the run and evaluated on the decision part."""
        ...

    def compare(self, a: Trial, b: Trial) -> Comparison:
        """A − B: the difference of the seed-mean scores, its 95% interval and P(A better) (mixlab.stats)."""
        ...

    def progress(self, description: str, total: int | None) -> AbstractContextManager[Callable[..., None]]:
        """A progress bar; the context value is ``advance(n=1, *, completed=None)``."""
        ...

    def cache_dir(self, kind: str, key: Any) -> Path:
        """A directory for reusable work keyed by a content hash of ``key`` (shared across stages)."""
        ...

    def record(self, **info: Any) -> None:
        """Attach facts to the current stage's entry in report.json (e.g. ``skipped=3``)."""
        ...

    def log(self, message: str) -> None:
        """Print a line above the progress display and append it to events.jsonl."""
        ...
