"""``individual_select``: dataset-level selection by fine-tuning ("Rethinking Overlooked Aspects in VLMs", §3 of
algorithms.md). Category by category, each candidate source is added alone to the current baseline mix, trained and
evaluated; it is kept if its score is not below the baseline's minus a tolerance; the kept ones join the baseline,
which is retrained before the next category. Every training goes through the run context, so it is cached, resumable
and shared with arms that train on the same samples; every candidate checkpoint stays available for a soup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, Selection, Selector
from mixlab.errors import UserError


class IndividualSelectOptions(Options):
    baseline: list[str] = Field(min_length=1, description="Sources of the starting mix (the paper's LLaVA-1.5 mix).")
    categories: list[str] | None = Field(
        None, description="Category order (default: the order in which the candidates' categories first appear)."
    )
    tolerance: float = Field(
        0.0,
        ge=0,
        description="Keep a candidate whose score is at least the baseline's minus this (points on the 0-100 "
        "average). The paper's value is unknown; about the baseline's seed-to-seed spread is a sensible choice.",
    )


class IndividualSelect(Selector):
    name = "individual_select"
    Options = IndividualSelectOptions

    def select(self, samples, scores, ctx) -> Selection:
        by_source: dict[str, list[dict[str, Any]]] = {}
        for s in samples:
            by_source.setdefault(s["source"], []).append(s)
        missing = [b for b in self.options.baseline if b not in by_source]
        if missing:
            raise UserError(
                f"selector {self.label!r}: baseline sources {missing} are not in the arm's sources "
                f"({', '.join(by_source)}). Add them to the arm or fix `baseline`."
            )
        plan = self._plan(by_source)
        current = list(self.options.baseline)

        def mix(sources: list[str]) -> list[dict[str, Any]]:
            return [s for src in sources for s in by_source[src]]

        def scored(model_dir: Path, tag: str) -> tuple[Path, float, dict[str, float]]:
            metrics = ctx.evaluate(model_dir, f"{self.label}/{tag}")
            return model_dir, ctx.aggregate(metrics), {b: m["score"] for b, m in metrics.items() if "score" in m}

        def run(sources: list[str], tag: str) -> tuple[Path, float, dict[str, float]]:
            return scored(ctx.train(mix(sources), f"{self.label}/{tag}"), tag)

        def rel(path: Path) -> str:
            path = Path(path).resolve()
            return str(path.relative_to(ctx.run_dir)) if path.is_relative_to(ctx.run_dir) else str(path)

        model_dir, score, metrics = run(current, "baseline")
        rounds: list[dict[str, Any]] = [self._round("baseline", [], current, score, metrics, rel(model_dir))]
        for category, candidates in plan.items():
            # the round's candidates are independent: trained at once where [run.executor] allows
            tags = [f"{category}/+{source}" for source in candidates]
            dirs = ctx.train_many(
                [(mix([*current, c]), f"{self.label}/{t}") for c, t in zip(candidates, tags, strict=True)]
            )
            results = []
            for source, tag, trained in zip(candidates, tags, dirs, strict=True):
                cand_dir, cand_score, cand_metrics = scored(trained, tag)
                kept = cand_score >= score - self.options.tolerance
                results.append(
                    {
                        "source": source,
                        "score": round(cand_score, 3),
                        "delta": round(cand_score - score, 3),
                        "kept": kept,
                        "metrics": cand_metrics,
                        "model_dir": rel(cand_dir),
                    }
                )
                if hasattr(ctx, "log"):
                    verdict = "kept" if kept else "rejected"
                    ctx.log(f"individual_select {category}: +{source} {cand_score:.2f} vs {score:.2f} → {verdict}")
            added = [r["source"] for r in results if r["kept"]]
            if added:
                current += added
                model_dir, score, metrics = run(current, f"{category}/baseline")
            rounds.append(self._round(category, results, current, score, metrics, rel(model_dir)))
        keep = set(current)
        block = {"rounds": rounds, "selected_sources": current, "tolerance": self.options.tolerance}
        return Selection(ids=[s["id"] for s in samples if s["source"] in keep], info={"individual_select": block})

    def _plan(self, by_source: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
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
    def _round(
        category: str,
        candidates: list[dict[str, Any]],
        baseline: list[str],
        score: float,
        metrics: dict[str, float],
        model_dir: str,
    ) -> dict[str, Any]:
        return {
            "category": category,
            "candidates": candidates,
            "baseline_sources": list(baseline),
            "baseline_score": round(score, 3),
            "baseline_metrics": metrics,
            "baseline_model_dir": model_dir,
        }


@hookimpl
def register_selectors(register):
    register(IndividualSelect)
