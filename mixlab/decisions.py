"""The run's rules for turning evaluations into decisions: which items a decision may look at (dev) and which a
report shows (test), how benchmarks are averaged, and estimates and comparisons over training seeds.

``select_on = "dev"`` splits every benchmark's item clusters by hash (``dev_fraction`` of them to dev): selectors and
mergers see dev-part scores, the report shows test-part scores, so no reported number was tuned on itself. A
benchmark without per-item outcomes cannot be split and is used whole (``Views.unsplit`` names them).
"""

from __future__ import annotations

from typing import Any, Literal

from mixlab.components import Evaluation, Metrics
from mixlab.errors import UserError
from mixlab.outcomes import ItemOutcomes
from mixlab.registry import did_you_mean
from mixlab.sections import RunSection
from mixlab.stats import Comparison, Estimate, compare, estimate, headline, restrict

Part = Literal["all", "dev", "test"]
N_DRAWS = 2000


class Decisions:
    """Views of evaluations on a part, weighted averages, and intervals, as the recipe's [run] section asks."""

    def __init__(self, run: RunSection):
        self.select_on = run.select_on
        self.dev_fraction = run.dev_fraction
        self.weights = dict(run.weights)
        self.exclude = tuple(run.exclude)
        self.unsplit: set[str] = set()  # benchmarks used whole because they have no per-item outcomes

    @property
    def decide_on(self) -> Part:
        return "dev" if self.select_on == "dev" else "all"

    @property
    def report_on(self) -> Part:
        return "test" if self.select_on == "dev" else "all"

    def view(self, evaluation: Evaluation, part: Part) -> Evaluation:
        """The evaluation restricted to one part: per-item outcomes restricted, each split benchmark's metrics
        reduced to its headline ``score`` on that part (and its item count)."""
        if part == "all":
            return evaluation
        metrics: Metrics = {}
        outcomes: dict[str, ItemOutcomes] = {}
        for bench, values in evaluation.metrics.items():
            items = evaluation.outcomes.get(bench)
            if items is None:
                self.unsplit.add(bench)
                metrics[bench] = values
                continue
            kept = restrict(items, part, bench, self.dev_fraction)
            if not len(kept):
                if bench in self.exclude or self.weights.get(bench, 1.0) == 0:
                    continue  # out of the average anyway: left out of this part, not scored NaN
                raise UserError(
                    f"benchmark {bench!r} has no items on the {part} part: all {len(items)} of its items fall on the "
                    f'other side of the dev/test split (select_on = "dev", dev_fraction = {self.dev_fraction}), so '
                    "its score there would be undefined. Give it more items, add it to [run] exclude, or drop "
                    'select_on = "dev".'
                )
            outcomes[bench] = kept
            metrics[bench] = {"score": float(headline(kept)), "items": float(len(kept))}
        return Evaluation(metrics, outcomes)

    def check_names(self, benchmarks: list[str]) -> None:
        """``weights`` and ``exclude`` name benchmarks the evaluators give (a typo would silently change nothing)."""
        problems = self.name_problems(benchmarks)
        if problems:
            raise UserError(problems[0][1])

    def name_problems(self, benchmarks: list[str]) -> list[tuple[str | None, str]]:
        """What ``check_names`` finds, every problem: (the [run] key at fault, or None for both, the message)."""
        problems: list[tuple[str | None, str]] = []
        for key, named in (("weights", list(self.weights)), ("exclude", list(self.exclude))):
            unknown = [b for b in named if b not in benchmarks]
            if unknown:
                problems.append(
                    (
                        key,
                        f"[run] {key} names {unknown}, but the evaluators give the benchmarks {benchmarks}. "
                        f"Fix the names in `{key}`.{did_you_mean(unknown[0], benchmarks)}",
                    )
                )
        if benchmarks and all(b in self.exclude or self.weights.get(b, 1.0) == 0 for b in benchmarks):
            problems.append(
                (
                    None,
                    f"[run] weights and exclude leave none of the benchmarks {benchmarks} in the average score: "
                    "keep at least one with a weight above 0.",
                )
            )
        return problems

    def aggregate(self, metrics: Metrics) -> float:
        """The weighted mean of the benchmarks' 0-100 ``score`` (``weights``, default 1; ``exclude`` left out)."""
        total = weight = 0.0
        for bench, values in metrics.items():
            w = self.weights.get(bench, 1.0)
            if "score" not in values or bench in self.exclude or w == 0:
                continue
            total += w * values["score"]
            weight += w
        return total / weight if weight else 0.0

    def mean_metrics(self, per_seed: list[Metrics]) -> Metrics:
        """Each metric's mean over seeds (metrics present in every seed)."""
        if len(per_seed) == 1:
            return per_seed[0]
        out: Metrics = {}
        for bench, values in per_seed[0].items():
            shared = [m[bench] for m in per_seed if bench in m]
            out[bench] = {
                k: sum(float(m[k]) for m in shared) / len(shared) for k in values if all(k in m for m in shared)
            }
        return out

    def entries(self, evaluations: list[Evaluation]) -> list[dict[str, ItemOutcomes | float]]:
        """Per seed: benchmark → per-item outcomes where the evaluator gave them, else its score."""
        out = []
        for ev in evaluations:
            entry: dict[str, ItemOutcomes | float] = {}
            for bench, values in ev.metrics.items():
                if bench in ev.outcomes:
                    entry[bench] = ev.outcomes[bench]
                elif "score" in values:
                    entry[bench] = float(values["score"])
            out.append(entry)
        return out

    def compare_categories(self, a: list[Evaluation], b: list[Evaluation], seed: int = 0) -> dict[str, Comparison]:
        """A − B on each benchmark category ("<benchmark>/<category>": the items of that category alone), for the
        benchmarks whose outcomes name categories; paired as ``compare`` pairs, weights not involved."""
        out: dict[str, Comparison] = {}
        for bench, items in a[0].outcomes.items():
            if not items.categories:
                continue
            if any(bench not in e.outcomes or not e.outcomes[bench].categories for e in (*a, *b)):
                raise UserError(
                    f"{bench}: the two arms' evaluations do not all name item categories (one was evaluated by a "
                    "mixlab that did not record them): rerun `mixlab run` to evaluate again, or compare without them."
                )
            for category in sorted({c for c in items.categories if c.strip()}):
                a_only, b_only = ([{bench: e.outcomes[bench].of_categories([category])} for e in arm] for arm in (a, b))
                out[f"{bench}/{category}"] = compare(a_only, b_only, n_draws=N_DRAWS, seed=seed)
        return out

    def estimate(self, evaluations: list[Evaluation], seed: int = 0) -> Estimate:
        entries = self.entries(evaluations)
        return estimate(entries, n_draws=N_DRAWS, seed=seed, **self._averaging(entries))

    def compare(self, a: list[Evaluation], b: list[Evaluation], seed: int = 0) -> Comparison:
        """A − B over paired seeds (the same seeds, the same items)."""
        entries = self.entries(a)
        return compare(entries, self.entries(b), n_draws=N_DRAWS, seed=seed, **self._averaging(entries))

    def _averaging(self, entries: list[dict[str, ItemOutcomes | float]]) -> dict[str, Any]:
        """``weights`` and ``exclude`` for these entries: a benchmark that ``view`` left out of a part (empty there,
        and out of the average anyway) is not named (``check_names`` has checked the names)."""
        present = {bench for entry in entries for bench in entry}
        return {
            "weights": {b: w for b, w in self.weights.items() if b in present},
            "exclude": tuple(b for b in self.exclude if b in present),
        }
