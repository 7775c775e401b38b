"""``individual_select``: dataset-level selection by fine-tuning ("Rethinking Overlooked Aspects in VLMs"; see
docs/individual_select.md). Category by category, each candidate source is added alone to the current baseline mix,
trained and evaluated; it is kept if its score is not below the baseline's minus a tolerance; the kept ones join the
baseline, which is retrained before the next category. Every training goes through the run context, so it is cached,
resumable and shared with arms that train on the same samples; every candidate checkpoint stays available for a soup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, RunContext, Selection, Selector, Trial
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.hookspecs import Register

if TYPE_CHECKING:
    import numpy as np


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

        baseline = ctx.trials([(mix(current), f"{self.label}/baseline")])[0]
        rounds: list[dict[str, Any]] = [self._round("baseline", [], current, baseline)]
        for category, candidates in self._plan(by_source).items():
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
        """A candidate's verdict against the round's baseline, with its difference and interval."""
        comparison = ctx.compare(trial, baseline)
        tolerance = self.options.tolerance
        if self.options.rule == "ci" and comparison.ci is not None:
            kept = comparison.ci[1] >= -tolerance
        else:
            kept = trial.score >= baseline.score - tolerance
        verdict = "kept" if kept else "rejected"
        interval = "" if comparison.ci is None else f" [{comparison.ci[0]:+.2f}, {comparison.ci[1]:+.2f}]"
        ctx.log(
            f"individual_select {category}: +{source} {trial.score:.2f} vs {baseline.score:.2f}{interval} → {verdict}"
        )
        first = next(iter(trial.model_dirs.values()))
        return {
            "source": source,
            "score": round(trial.score, 3),
            "delta": round(trial.score - baseline.score, 3),
            "ci": None if comparison.ci is None else [round(x, 3) for x in comparison.ci],
            "p_better": None if comparison.p_better is None else round(comparison.p_better, 4),
            "interval": comparison.interval,
            "kept": kept,
            "metrics": {b: m["score"] for b, m in trial.metrics.items()},
            "model_dir": first,
            "model_dirs": {str(seed): d for seed, d in trial.model_dirs.items()},
        }

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
