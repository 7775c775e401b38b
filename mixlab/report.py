"""report.json (the fixed contract), report.md with plots, and the rich tables printed at the end of a run."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixlab import __version__
from mixlab.engine.keys import mixlab_code
from mixlab.report_plots import plot
from mixlab.report_tables import print_tables, render_markdown
from mixlab.run_folder import is_finished_report
from mixlab.store import Store, atomic_write_json, atomic_write_text, save_samples

if TYPE_CHECKING:
    from mixlab.data import Sample
    from mixlab.results import AlignResult, ArmResult, Replicate, RunResult

FAILED_REPORT = "report-failed.json"


def ground_truth(
    chosen: Sequence[Mapping[str, Any]], pool: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any] | None:
    """What a training set holds of the known truth (toy world: per-sample noise flags, per-source quality).

    With the pool a selector chose from, also the selection's precision and recall: of the samples it removed, the
    share that were noisy (precision) and of the noisy samples, the share it removed (recall); the same for samples of
    known-harmful sources (quality "noisy"), and the share of clean samples it kept.
    """
    flagged = [s for s in chosen if s.get("noisy") is not None]
    if not flagged:
        return None
    noisy = sum(1 for s in flagged if s["noisy"])
    out: dict[str, Any] = {"noisy_samples": noisy, "noisy_fraction": round(noisy / len(flagged), 4)}
    if pool is None or len(pool) == len(chosen):
        return out
    kept = {s["id"] for s in chosen}
    removed = [s for s in pool if s["id"] not in kept]

    def removal(bad: Callable[[Mapping[str, Any]], bool]) -> dict[str, float | None]:
        n_bad = sum(1 for s in pool if bad(s))
        hits = sum(1 for s in removed if bad(s))
        return {
            "precision": round(hits / len(removed), 4) if removed else None,
            "recall": round(hits / n_bad, 4) if n_bad else None,
        }

    clean = [s for s in pool if s.get("noisy") is False]
    out["removed_noisy"] = removal(lambda s: bool(s.get("noisy")))
    if any(s.get("quality") for s in pool):
        out["removed_harmful_source"] = removal(lambda s: s.get("quality") == "noisy")
        qualities = sorted({s["quality"] for s in pool if s.get("quality")})
        out["kept_by_quality"] = {
            q: round(sum(1 for s in chosen if s.get("quality") == q) / sum(1 for s in pool if s.get("quality") == q), 4)
            for q in qualities
        }
    out["kept_clean"] = round(sum(1 for s in clean if s["id"] in kept) / len(clean), 4) if clean else None
    return out


def build_report(result: RunResult, error: str | None = None) -> dict[str, Any]:
    """report.json's content (the fixed contract, plus extras) from a run's typed result."""
    arms = {name: arm_entry(arm) for name, arm in result.arms.items()}
    report: dict[str, Any] = {
        "mixlab_version": __version__,
        "mixlab_code": mixlab_code(),
        "recipe": str(result.recipe),
        "run_dir": str(result.run_dir),
        "seeds": result.seeds,
        "select_on": result.select_on,
        "stages": [s.to_json() for s in result.stages],
        "arms": arms,
    }
    if result.health:
        report["benchmarks"] = {b: finite(h.to_json()) for b, h in result.health.items()}
    if result.unsplit:
        report["unsplit_benchmarks"] = result.unsplit
    if result.align is not None:
        report["align_selection"] = align_entry(result.align)
    judged = [name for name, arm in result.arms.items() if "individual_select" in arm.selection]
    for name in judged[:-1]:  # the last one's decisions are the top-level block; the others keep theirs in their arm
        arms[name].setdefault("selection", {})["individual_select"] = result.arms[name].selection["individual_select"]
    if judged:
        report["individual_select"] = result.arms[judged[-1]].selection["individual_select"]
    if result.soup is not None:
        soup = result.soup
        report["soup"] = {
            "method": soup.method,
            "ingredients": soup.ingredients,
            "kept": soup.kept,
            "metrics": soup.metrics,
            "score": soup.score,
            "info": soup.info,
            "per_seed": {
                str(r.seed): {**per_seed_entry(r), "kept": soup.per_seed[r.seed]["kept"]} for r in soup.replicates
            },
        }
    if error is not None:
        report["error"] = error
    return report


def arm_entry(arm: ArmResult) -> dict[str, Any]:
    """One arm in report.json: the contract's keys, the per-seed results and the decision numbers."""
    entry: dict[str, Any] = {
        "n_samples": len(arm.chosen),
        "sources": arm.sources,
        "metrics": arm.metrics,
        "score": arm.score,
        "model_dir": str(arm.model_dir),
        "per_seed": {str(r.seed): per_seed_entry(r) for r in arm.replicates},
    }
    if arm.estimate is not None:
        entry["score_ci"] = None if arm.estimate.ci is None else list(arm.estimate.ci)
        entry["score_interval"] = arm.estimate.interval
        entry["benchmark_ci"] = {b: None if e.ci is None else list(e.ci) for b, e in arm.estimate.benchmarks.items()}
    if arm.comparison is not None:
        c = arm.comparison
        entry["compare"] = finite(
            {
                "to": arm.compared_to,
                "delta": c.delta,
                "ci": None if c.ci is None else list(c.ci),
                "p_better": c.p_better,
                "interval": c.interval,
                "se": c.se,
                "distinguishable": c.distinguishable,
                **c.plan(),
                "benchmarks": {
                    b: {
                        "delta": x.delta,
                        "ci": None if x.ci is None else list(x.ci),
                        "p_better": x.p_better,
                        "interval": x.interval,
                        "se": x.se,
                        "mcnemar_p": x.mcnemar_p,
                        **x.plan(),
                    }
                    for b, x in c.benchmarks.items()
                },
            }
        )
    truth = ground_truth(arm.chosen, arm.pool)
    if truth:
        entry["ground_truth"] = truth
    if arm.selection:
        entry["selection"] = {k: v for k, v in arm.selection.items() if k != "individual_select"}
    if arm.align is not None:
        entry["align_selection"] = align_entry(arm.align)
    return entry


def align_entry(align: AlignResult) -> dict[str, Any]:
    """An alignment pool's selection: its size, what was kept, the selector's info and, where samples carry a noise
    flag, the noisy samples in the pool, those kept and the share of them removed."""
    entry: dict[str, Any] = {"n_pool": len(align.pool), "n_selected": len(align.chosen), "info": align.info}
    if any(s.get("noisy") is not None for s in align.pool):
        noisy = sum(1 for s in align.pool if s.get("noisy"))
        kept = sum(1 for s in align.chosen if s.get("noisy"))
        entry.update(noisy_in_pool=noisy, noisy_kept=kept, noisy_removed=round(1 - kept / noisy, 4) if noisy else None)
    return entry


def per_seed_entry(replicate: Replicate) -> dict[str, Any]:
    """One seed's metrics and score (its model is in stages/, under the training's key)."""
    return {"metrics": replicate.evaluation.metrics, "score": replicate.score}


def finite(value: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become null (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def write_report(
    result: RunResult, error: str | None = None, selections: Mapping[str, Sequence[Sample]] | None = None
) -> dict[str, Any]:
    """Write the run's files: the ``selections`` given (arm → samples; those saved as selected need not be), the
    recipe copy, report.md and the plots, and report.json last; returns the report.

    A failed run (``error`` given) never overwrites the files of an earlier finished run in the same folder: its
    report goes to report-failed.json instead. Otherwise the earlier report.json goes first, so a stop while the
    files are written leaves no report that disagrees with them (a rerun writes them again from its stages).
    """
    report = build_report(result, error)
    run_dir = result.run_dir
    if error is not None and is_finished_report(run_dir / "report.json"):
        atomic_write_json(run_dir / FAILED_REPORT, report)
        return report
    (run_dir / "report.json").unlink(missing_ok=True)
    store = Store(run_dir)
    for arm, chosen in (selections or {}).items():
        save_samples(store.selection_file(arm), chosen)
    store.keep_recipe(result.recipe)
    render(report, run_dir, show=error is None)  # a failed run ends with its error message alone
    atomic_write_json(run_dir / "report.json", report)  # last: a report.json says the files beside it are done
    (run_dir / FAILED_REPORT).unlink(missing_ok=True)
    return report


def render(report: dict[str, Any], run_dir: Path, show: bool = True) -> None:
    """report.md and its plots from a report, and (``show``) the terminal tables (also `mixlab report RUN_DIR`)."""
    atomic_write_text(run_dir / "report.md", render_markdown(report, plot(report, run_dir)))
    if show:
        print_tables(report)
