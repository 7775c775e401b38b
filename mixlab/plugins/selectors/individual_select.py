"""``individual_select``: dataset-level selection by fine-tuning ("Rethinking Overlooked Aspects in VLMs"; see
docs/individual_select.md). Category by category, each candidate source is added alone to the current baseline mix,
trained and evaluated; it is kept if its score is not below the baseline's minus a tolerance (and, where
``category_items`` names them, not below it on its own category's benchmark items either); the kept ones join the
baseline, which is retrained before the next category. Every training goes through the run context, so it is cached,
resumable and shared with arms that train on the same samples; every candidate checkpoint stays available for a soup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from mixlab import hookimpl
from mixlab.components import Evaluation, Options, RunContext, Selection, Selector, Trial
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.hookspecs import Register
from mixlab.registry import did_you_mean

if TYPE_CHECKING:
    import numpy as np

    from mixlab.outcomes import ItemOutcomes
    from mixlab.stats import Comparison


class IndividualSelectOptions(Options):
    baseline: list[str] = Field(min_length=1, description="Sources of the starting mix (the paper's LLaVA-1.5 mix).")
    categories: list[str] | None = Field(
        None, description="Category order (default: the order in which the candidates' categories first appear)."
    )
    rule: Literal["tolerance", "ci"] = Field(
        "tolerance",
        description="\"tolerance\" (the paper's rule): keep a candidate whose score is at least the baseline's minus "
        '`tolerance`. "ci": keep it unless the upper end of the 95% interval of its difference to the baseline is '
        "below -tolerance (it is kept when it cannot be told apart from the baseline, rejected when it is clearly "
        "worse); the interval covers the seeds of [run] seeds and the benchmark items.",
    )
    tolerance: float = Field(
        0.0,
        ge=0,
        description="Points on the 0-100 average: how much worse than the baseline a candidate may be and stay.",
    )
    category_items: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Per candidate category, the benchmark items that test it: "BENCH" (the whole benchmark) or '
        '"BENCH/CATEGORY" (its items of one category, the TSV\'s `category` column). A candidate of a listed category '
        "must pass `rule` on these items alone as well as on the average: a source that spoils its own category can "
        "lose little on an average over many benchmarks.",
    )

    @field_validator("category_items")
    @classmethod
    def _entries(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for category, entries in value.items():
            if not entries:
                raise ValueError(f"{category!r} is empty: list at least one benchmark or benchmark/category")
            for entry in entries:
                bench, _, part = entry.partition("/")
                if not bench.strip() or (entry.count("/") and not part.strip()):
                    raise ValueError(
                        f'{category!r}: {entry!r} is not "BENCH" or "BENCH/CATEGORY": write a benchmark\'s name, '
                        "then after a slash one of its item categories"
                    )
            twice = sorted({e for e in entries if entries.count(e) > 1})
            if twice:
                raise ValueError(f"{category!r} lists {twice[0]!r} twice: name each once")
            whole = [e for e in entries if "/" not in e]
            both = [e for e in entries if "/" in e and e.partition("/")[0] in whole]
            if both:
                raise ValueError(
                    f"{category!r} names {both[0].partition('/')[0]!r} whole and {both[0]!r}: drop one (the whole "
                    "benchmark already holds its categories)"
                )
        return value


class IndividualSelect(Selector):
    """Add each candidate source to the baseline mix, train (once per seed), evaluate, keep it if not worse."""

    name = "individual_select"
    Options = IndividualSelectOptions
    options: IndividualSelectOptions
    trains_models = True

    def select(self, samples: list[Sample], scores: dict[str, np.ndarray], ctx: RunContext) -> Selection:
        by_source: dict[str, list[Sample]] = {}
        for s in samples:
            by_source.setdefault(s["source"], []).append(s)
        missing = [b for b in self.options.baseline if b not in by_source]
        if missing:
            raise UserError(
                f"selector {self.label!r}: baseline sources {missing} are not in the arm's sources "
                f"({', '.join(by_source)}). Add them to the arm or fix `baseline`."
            )
        current = list(self.options.baseline)

        def mix(sources: list[str]) -> list[Sample]:
            return [s for src in sources for s in by_source[src]]

        plan = self._plan(by_source)
        unplanned = [c for c in self.options.category_items if c not in plan]
        if unplanned:
            raise UserError(
                f"selector {self.label!r}: `category_items` names category {unplanned[0]!r}, which no candidate source "
                f"has: fix the name or drop it.{did_you_mean(unplanned[0], list(plan))}"
            )
        baseline = ctx.trials([(mix(current), f"{self.label}/baseline")])[0]
        for evaluation in baseline.evaluations.values():  # a misspelt name fails now, after one training per seed
            for entries in self.options.category_items.values():
                own_items(evaluation, entries, self.label)
        rounds: list[dict[str, Any]] = [self._round("baseline", [], current, baseline)]
        for category, candidates in plan.items():
            # the round's candidates are independent: trained at once where [run.executor] allows
            jobs = [(mix([*current, c]), f"{self.label}/{category}/+{c}") for c in candidates]
            results = [
                {**self._judge(category, source, trial, baseline, ctx), **known_quality(by_source[source])}
                for source, trial in zip(candidates, ctx.trials(jobs), strict=True)
            ]
            added = [r["source"] for r in results if r["kept"]]
            if added:
                current += added
                baseline = ctx.trials([(mix(current), f"{self.label}/{category}/baseline")])[0]
            rounds.append(self._round(category, results, current, baseline))
        keep = set(current)
        block: dict[str, Any] = {
            "rule": self.options.rule,
            "tolerance": self.options.tolerance,
            "rounds": rounds,
            "selected_sources": current,
        }
        kinds = decisions_by_quality(rounds)
        if kinds:
            block["decisions_by_quality"] = kinds
        return Selection(ids=[s["id"] for s in samples if s["source"] in keep], info={"individual_select": block})

    def _judge(self, category: str, source: str, trial: Trial, baseline: Trial, ctx: RunContext) -> dict[str, Any]:
        """A candidate's verdict against the round's baseline: the rule on the average, and on its own category's
        items too where ``category_items`` lists the category."""
        comparison = ctx.compare(trial, baseline)
        delta = trial.score - baseline.score
        kept = self._passes(comparison, delta)
        message = f"individual_select {category}: +{source} {trial.score:.2f} vs {baseline.score:.2f}"
        message += bracket(comparison)
        own: dict[str, Any] = {}
        entries = self.options.category_items.get(category)
        if entries:
            focused, own["own_items"] = self._own_verdict(entries, trial, baseline)
            kept = kept and own["own_items"]["passed"]
            message += f"; on its own items {focused.delta:+.2f}{bracket(focused)}"
        ctx.log(f"{message} → {'kept' if kept else 'rejected'}")
        return {
            "source": source,
            "score": round(trial.score, 3),
            "delta": round(delta, 3),
            **interval_fields(comparison),
            "kept": kept,
            **own,
            "metrics": {b: m["score"] for b, m in trial.metrics.items()},
            "model_dir": next(iter(trial.model_dirs.values())),
            "model_dirs": {str(seed): d for seed, d in trial.model_dirs.items()},
        }

    def _own_verdict(self, entries: list[str], trial: Trial, baseline: Trial) -> tuple[Comparison, dict[str, Any]]:
        """Candidate − baseline on the items ``entries`` name alone, paired by seed and item; the report's record."""
        from mixlab.stats import compare  # scipy: imported only when a run judges

        seeds = [s for s in trial.evaluations if s in baseline.evaluations]
        a, b = ([own_items(t.evaluations[s], entries, self.label) for s in seeds] for t in (trial, baseline))
        focused = compare(a, b)
        questions = sum(len(v) for v in a[0].values() if not isinstance(v, float))
        record = {
            "delta": round(focused.delta, 3),
            **interval_fields(focused),
            "items": questions,
            "passed": self._passes(focused, focused.delta),
        }
        return focused, record

    def _passes(self, comparison: Comparison, delta: float) -> bool:
        """The keep rule on one difference (candidate − baseline, ``delta``): not clearly worse than -tolerance (ci,
        where there is an interval), or not worse at all (tolerance)."""
        if self.options.rule == "ci" and comparison.ci is not None:
            return comparison.ci[1] >= -self.options.tolerance
        return delta >= -self.options.tolerance

    def _plan(self, by_source: dict[str, list[Sample]]) -> dict[str, list[str]]:
        """Category → candidate sources (those not in the baseline), in the configured or first-seen order."""
        plan: dict[str, list[str]] = {}
        for source, rows in by_source.items():
            if source not in self.options.baseline:
                plan.setdefault(rows[0].get("category") or "uncategorised", []).append(source)
        if self.options.categories is None:
            return plan
        unknown = [c for c in self.options.categories if c not in plan]
        left_out = [c for c in plan if c not in self.options.categories]
        if unknown or left_out:
            raise UserError(
                f"selector {self.label!r}: `categories` must list each candidate category once; "
                + (f"no candidate source has category {unknown}; " if unknown else "")
                + (f"missing {left_out}; " if left_out else "")
                + f"candidate categories: {', '.join(plan)}."
            )
        return {c: plan[c] for c in self.options.categories}

    @staticmethod
    def _round(category: str, candidates: list[dict[str, Any]], baseline: list[str], trial: Trial) -> dict[str, Any]:
        return {
            "category": category,
            "candidates": candidates,
            "baseline_sources": list(baseline),
            "baseline_score": round(trial.score, 3),
            "baseline_metrics": {b: m["score"] for b, m in trial.metrics.items()},
            "baseline_model_dir": next(iter(trial.model_dirs.values())),
            "baseline_model_dirs": {str(seed): d for seed, d in trial.model_dirs.items()},
        }


def interval_fields(c: Comparison) -> dict[str, Any]:
    """A comparison's 95% interval, P(better), interval kind and what more evidence would decide it, for the
    report."""
    return {
        "ci": None if c.ci is None else [round(x, 3) for x in c.ci],
        "p_better": None if c.p_better is None else round(c.p_better, 4),
        "interval": c.interval,
        **c.plan(),
    }


def bracket(c: Comparison) -> str:
    """ " [lo, hi]" for a log line, or nothing without an interval."""
    return "" if c.ci is None else f" [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}]"


def own_items(evaluation: Evaluation, entries: list[str], label: str) -> dict[str, ItemOutcomes | float]:
    """The evaluation on the items ``entries`` name ("BENCH" or "BENCH/CATEGORY"), benchmark → outcomes (or its
    score where a whole benchmark has no per-item outcomes), for ``mixlab.stats.compare``."""
    wanted: dict[str, set[str] | None] = {}
    for entry in entries:
        bench, _, category = entry.partition("/")
        if bench not in evaluation.metrics:
            raise UserError(
                f"selector {label!r}: `category_items` names benchmark {bench!r}, which the evaluators do not give: "
                f"fix the name.{did_you_mean(bench, list(evaluation.metrics))}"
            )
        wanted[bench] = None if not category else (wanted.get(bench) or set()) | {category}
    out: dict[str, ItemOutcomes | float] = {}
    for bench, categories in wanted.items():
        items = evaluation.outcomes.get(bench)
        if categories is None:
            out[bench] = items if items is not None else whole_score(evaluation, bench, label)
            continue
        known = sorted({c for c in items.categories if c.strip()}) if items is not None else []
        if items is None or not known:
            raise UserError(
                f"selector {label!r}: `category_items` names categories of {bench}, but its results name no item "
                f'categories (its TSV has no `category` column, or the evaluator gives none): name "{bench}" whole, '
                "or rerun `mixlab run` if it was evaluated by a mixlab that did not record them."
            )
        unknown = sorted(categories - set(known))
        if unknown:
            raise UserError(
                f"selector {label!r}: {bench} has no item category {unknown[0]!r} among the items decisions see (with "
                '[run] select_on = "dev", a small category can fall wholly in the test part): fix the name or name '
                f"another category.{did_you_mean(unknown[0], known)}"
            )
        out[bench] = items.of_categories(categories)
    return out


def whole_score(evaluation: Evaluation, bench: str, label: str) -> float:
    """A benchmark's 0-100 ``score`` where it has no per-item outcomes."""
    if "score" not in evaluation.metrics[bench]:
        raise UserError(
            f"selector {label!r}: `category_items` names {bench}, which gives neither per-item results nor a `score` "
            f"(it gives {', '.join(evaluation.metrics[bench]) or 'nothing'}): name another benchmark."
        )
    return float(evaluation.metrics[bench]["score"])


def known_quality(rows: list[Sample]) -> dict[str, str]:
    """The source's known quality where its samples carry one (the toy world: clean, noisy, duplicate, offtask)."""
    quality = rows[0].get("quality")
    return {"quality": str(quality)} if quality else {}


def decisions_by_quality(rounds: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per known quality: how many candidates were kept, of how many (the decisions against the known truth)."""
    out: dict[str, dict[str, int]] = {}
    for r in rounds:
        for c in r["candidates"]:
            if "quality" in c:
                counts = out.setdefault(c["quality"], {"kept": 0, "candidates": 0})
                counts["kept"] += int(c["kept"])
                counts["candidates"] += 1
    return out


@hookimpl
def register_selectors(register: Register) -> None:
    register(IndividualSelect)
