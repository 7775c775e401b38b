"""report.json (the fixed contract), report.md with plots, and the rich tables printed at the end of a run."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from mixlab import __version__
from mixlab.progress import console
from mixlab.store import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from mixlab.results import ArmResult, Replicate, RunResult

FAILED_REPORT = "report-failed.json"


def ground_truth(chosen: list[dict[str, Any]], pool: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
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

    def removal(bad: Callable[[dict[str, Any]], bool]) -> dict[str, float | None]:
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
    for arm in result.arms.values():
        if "individual_select" in arm.selection:
            report["individual_select"] = arm.selection["individual_select"]
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
    if arm.comparison is not None:
        c = arm.comparison
        entry["compare"] = finite(
            {
                "to": arm.compared_to,
                "delta": c.delta,
                "ci": None if c.ci is None else list(c.ci),
                "p_better": c.p_better,
                "interval": c.interval,
                "distinguishable": c.distinguishable,
                "benchmarks": {
                    b: {
                        "delta": x.delta,
                        "ci": None if x.ci is None else list(x.ci),
                        "p_better": x.p_better,
                        "interval": x.interval,
                        "mcnemar_p": x.mcnemar_p,
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


def write_report(result: RunResult, error: str | None = None) -> dict[str, Any]:
    """Write report.json, report.md and the plots; returns the report.

    A failed run (``error`` given) never overwrites the report of an earlier finished run in the same folder: its
    report goes to report-failed.json instead, and report.md is left alone.
    """
    report = build_report(result, error)
    run_dir = result.run_dir
    if error is not None and is_finished_report(run_dir / "report.json"):
        atomic_write_json(run_dir / FAILED_REPORT, report)
        return report
    atomic_write_json(run_dir / "report.json", report)
    (run_dir / FAILED_REPORT).unlink(missing_ok=True)
    render(report, run_dir, show=error is None)  # a failed run ends with its error message alone
    return report


def is_finished_report(path: Path) -> bool:
    """Whether path holds the report of a run that finished: no ``error`` and no failed stage."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(report, dict):
        return False
    return "error" not in report and all(s.get("status") != "failed" for s in report.get("stages", []))


def render(report: dict[str, Any], run_dir: Path, show: bool = True) -> None:
    """report.md and its plots from a report, and (``show``) the terminal tables (also `mixlab report RUN_DIR`)."""
    atomic_write_text(run_dir / "report.md", render_markdown(report, plot(report, run_dir)))
    if show:
        print_tables(report)


# --------------------------------------------------------------------------------------------------------------------
# rendering helpers: every table is built once as text cells, then drawn as markdown and as a rich table

SAME, BETTER, WORSE, AT_CHANCE = "≈", "▲", "▼", "†"
INTERVAL_KINDS = {
    "seeds+items": "training seeds and benchmark items",
    "items": "benchmark items only (no seed noise)",
    "seeds": "training seeds only (no item noise)",
    "none": "no interval",
}
HEALTH_LEGEND = (
    "chance: a random guesser's score; noise: seed std / mean; signal: spread of the arms / mean; SNR = signal / noise "
    "(below ~1: differences are mostly seed noise); MDD: smallest difference found 80 % of the time (score points); "
    "at chance: arms whose interval contains chance. See docs/decisions.md."
)


def _num(value: Any, spec: str = ".1f") -> str:
    """A number formatted with spec, or "-" for null, NaN and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return format(value, spec)


def _ci(ci: Any, spec: str = "+.2f") -> str:
    """An interval as "[lo, hi]", or "-" without one."""
    if not isinstance(ci, list | tuple) or len(ci) != 2 or "-" in (_num(ci[0]), _num(ci[1])):
        return "-"
    return f"[{_num(ci[0], spec)}, {_num(ci[1], spec)}]"


def _half_width(ci: Any) -> float | None:
    """Half the width of an interval (None without a usable one)."""
    if _ci(ci) == "-":
        return None
    return (ci[1] - ci[0]) / 2


def _distinguishable(comparison: dict[str, Any]) -> bool | None:
    """The comparison's verdict: its own ``distinguishable``, else whether its interval excludes 0."""
    if "distinguishable" in comparison:
        return comparison["distinguishable"]
    ci = comparison.get("ci")
    return None if _ci(ci) == "-" else not (ci[0] <= 0.0 <= ci[1])


def _mark(comparison: dict[str, Any] | None) -> str:
    """≈ when the interval of Δ contains 0, ▲ / ▼ when it lies above / below 0, "" without an interval."""
    if not comparison:
        return ""
    verdict = _distinguishable(comparison)
    if verdict is None:
        return ""
    if not verdict:
        return SAME
    return BETTER if (comparison.get("delta") or 0.0) > 0 else WORSE


def _reference(report: dict[str, Any]) -> str | None:
    """The compare_to arm (named by the other arms' comparisons)."""
    return next((a["compare"].get("to") for a in report["arms"].values() if a.get("compare")), None)


def _n_seeds(report: dict[str, Any], arm: dict[str, Any]) -> int | None:
    """How many training seeds an arm's numbers average."""
    if arm.get("per_seed"):
        return len(arm["per_seed"])
    return len(report["seeds"]) if report.get("seeds") else None


def _at_chance(report: dict[str, Any]) -> dict[str, list[str]]:
    """Benchmark → the arms at chance on it."""
    return {b: list(h.get("at_chance") or []) for b, h in (report.get("benchmarks") or {}).items()}


def _one_seed(report: dict[str, Any]) -> bool:
    """Whether the report has intervals and every arm was trained with one seed."""
    arms = report["arms"].values()
    has_intervals = any("score_interval" in a or "compare" in a for a in arms)
    seeds = {_n_seeds(report, a) for a in arms}
    return has_intervals and seeds == {1}


def _arms_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """The arms table: headers, rows of cells (the score cell second after the benchmarks), notes below it."""
    benches = _benchmarks(report)
    rows = _rows(report)
    reference = _reference(report)
    chance = _at_chance(report)
    with_interval = any("score_interval" in a for a in rows.values())
    with_compare = reference is not None
    with_half = any(_half_width(a.get("score_ci")) is not None for a in rows.values())
    headers = ["arm", "samples", "seeds", *benches, "score" + (" ± 95% CI" if with_half else "")]
    if with_interval:
        headers.append("interval")
    if with_compare:
        headers += [f"Δ vs {reference} [95% CI]", "P(better)"]
    table: list[list[str]] = []
    flagged = False
    for name, arm in rows.items():
        cells = []
        for b in benches:
            cell = _num(arm["metrics"][b].get("score")) if b in arm["metrics"] else "-"
            if name in chance.get(b, []):
                cell, flagged = f"{cell} {AT_CHANCE}", True
            cells.append(cell)
        half = _half_width(arm.get("score_ci"))
        score = _num(arm.get("score")) + ("" if half is None else f" ± {half:.1f}")
        mark = _mark(arm.get("compare"))
        seeds = _n_seeds(report, arm)
        row = [name, str(arm.get("n_samples", "")), "" if seeds is None else str(seeds), *cells, score, mark]
        if with_interval:
            row.append(arm.get("score_interval") or "-")
        if with_compare:
            c = arm.get("compare")
            if c:
                ci = _ci(c.get("ci"))
                delta = _num(c.get("delta"), "+.2f") + ("" if ci == "-" else f" {ci}")
                row += [delta, _num(c.get("p_better"), ".2f")]
            else:
                row += ["(reference)" if name == reference else "-", "-"]
        table.append(row)
    notes = []
    if any(row[len(benches) + 4] for row in table):
        notes.append(
            f"{SAME}: not distinguishable from {reference} (the 95% CI of Δ contains 0); {BETTER} / {WORSE}: "
            f"distinguishably better / worse. P(better): share of resampled differences above 0 (not a p-value)."
        )
    if with_interval:
        kinds = sorted({a["score_interval"] for a in rows.values() if a.get("score_interval")})
        notes.append("interval: " + "; ".join(f"{k} = {INTERVAL_KINDS.get(k, k)}" for k in kinds) + ".")
    if flagged:
        notes.append(f"{AT_CHANCE}: the arm's interval contains this benchmark's chance level (see benchmark health).")
    if _one_seed(report):
        notes.append(
            "⚠ One training seed: the intervals contain benchmark-item noise only, not seed (training) noise; "
            "they are too narrow to conclude that one mix beats another. Use seeds = 3 or more."
        )
    return headers, table, notes


def _comparison_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per arm compared to the reference: Δ, its interval and P(better) for the average and each benchmark."""
    headers = ["arm", "benchmark", "Δ", "95% CI", "P(better)", "interval", "McNemar p", ""]
    table = []
    for name, arm in report["arms"].items():
        c = arm.get("compare")
        if not c:
            continue
        for bench, x in [("average", c), *(c.get("benchmarks") or {}).items()]:
            table.append(
                [
                    name,
                    bench,
                    _num(x.get("delta"), "+.2f"),
                    _ci(x.get("ci")),
                    _num(x.get("p_better"), ".2f"),
                    x.get("interval") or "-",
                    _num(x.get("mcnemar_p"), ".3g"),
                    _mark(x),
                ]
            )
    return headers, table


def _health_table(report: dict[str, Any]) -> tuple[list[str], list[tuple[list[str], bool]]]:
    """Benchmark health: one row per benchmark, flagged when arms are at chance."""
    headers = ["benchmark", "chance", "noise", "signal", "SNR", "MDD", "arms at chance"]
    table = []
    for bench, h in (report.get("benchmarks") or {}).items():
        at = list(h.get("at_chance") or [])
        cells = [
            bench,
            _num(h.get("chance")),
            _num(h.get("noise"), ".3f"),
            _num(h.get("signal"), ".3f"),
            _num(h.get("snr"), ".2f"),
            _num(h.get("mdd"), ".2f"),
            ", ".join(at) or "-",
        ]
        table.append((cells, bool(at)))
    return headers, table


def _rule_line(block: dict[str, Any]) -> str:
    """Individual Select's keep rule, in words."""
    rule, tol = block.get("rule"), _num(block.get("tolerance"), "g")
    minus = "minus the tolerance" if tol == "-" else f"-{tol}"
    if rule == "ci":
        return f"rule: ci (keep a candidate unless the upper end of its Δ's 95% CI is below {minus})"
    if rule == "tolerance":
        return (
            f"rule: tolerance (keep a candidate whose score is at least the baseline's {minus.replace('-', 'minus ')})"
        )
    return "" if tol == "-" else f"rule: tolerance {tol}"


def _isel_table(block: dict[str, Any]) -> tuple[list[str], list[tuple[list[str], bool | None]]]:
    """Individual Select rounds: each candidate's score, Δ, interval, P(better) and verdict, then the new baseline."""
    headers = ["round", "candidate", "score", "delta", "95% CI", "P(better)", "kept"]
    table: list[tuple[list[str], bool | None]] = []
    for r in block.get("rounds") or []:
        for c in r.get("candidates") or []:
            cells = [
                r.get("category", ""),
                f"+{c.get('source', '?')}",
                _num(c.get("score"), ".2f"),
                _num(c.get("delta"), "+.2f"),
                _ci(c.get("ci")),
                _num(c.get("p_better"), ".2f"),
                "kept" if c.get("kept") else "rejected",
            ]
            table.append((cells, bool(c.get("kept"))))
        sources = r.get("baseline_sources")
        count = "" if sources is None else f" ({len(sources)} source{'' if len(sources) == 1 else 's'})"
        what = f"baseline{count}"
        table.append(([r.get("category", ""), what, _num(r.get("baseline_score"), ".2f"), "", "", "", ""], None))
    return headers, table


def _split_lines(report: dict[str, Any]) -> list[str]:
    """What select_on = "dev" means for the numbers, and the benchmarks that could not be split."""
    lines = []
    if report.get("select_on") == "dev":
        lines.append(
            "Selections and soups were decided on the dev part of each benchmark; every number reported here is on "
            "the test part."
        )
    if report.get("unsplit_benchmarks"):
        lines.append(
            "Unsplit benchmarks (no per-item results, so used whole for both selection and report; their numbers for "
            "selected arms are optimistic): " + ", ".join(report["unsplit_benchmarks"]) + "."
        )
    return lines


def _benchmarks(report: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for arm in report["arms"].values():
        names += [b for b in arm["metrics"] if b not in names]
    return names


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = dict(report["arms"])
    if "soup" in report:
        rows[f"soup ({report['soup']['method']})"] = report["soup"]
    return rows


# --------------------------------------------------------------------------------------------------------------------
# terminal


def _rich_table(title: str, headers: list[str], right: int = 1) -> Table:
    """A rich table whose first ``right`` columns are left-aligned and the rest right-aligned."""
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(escape(h), justify="left" if i < right else "right", style="bold" if i == 0 else None)
    return table


def print_tables(report: dict[str, Any]) -> None:
    """The report's tables on the terminal: arms, comparisons, benchmark health, Individual Select, stages."""
    if report.get("error"):
        console.print(f"[bold red]run failed:[/] {escape(str(report['error']))}")
    for line in _split_lines(report):
        console.print(f"[yellow]{escape(line)}[/]")
    headers, rows, notes = _arms_table(report)
    n_bench = len(_benchmarks(report))
    score_at = 3 + n_bench
    table = _rich_table("arms × benchmarks (score, 0-100)", [*headers[: score_at + 1], "", *headers[score_at + 1 :]])
    for row in rows:
        mark = row[score_at + 1]
        color = {SAME: "yellow", BETTER: "green", WORSE: "red"}.get(mark, "white")
        cells = [escape(c) for c in row]
        cells[score_at] = f"[bold green]{cells[score_at]}[/]"
        cells[score_at + 1] = f"[{color}]{mark}[/]" if mark else ""
        table.add_row(*cells)
    console.print(table)
    for note in notes:
        console.print(escape(note), style="yellow" if note.startswith("⚠") else "dim")
    headers, rows = _comparison_table(report)
    if rows:
        table = _rich_table(f"Δ vs {_reference(report)} (score points)", headers, right=2)
        for row in rows:
            table.add_row(*[escape(c) for c in row])
        console.print(table)
    headers, health = _health_table(report)
    if health:
        table = _rich_table("benchmark health", headers)
        for cells, flagged in health:
            table.add_row(*[escape(c) for c in cells], style="bold red" if flagged else None)
        console.print(table)
        console.print(escape(HEALTH_LEGEND), style="dim")
    block = report.get("individual_select")
    if block:
        headers, isel = _isel_table(block)
        table = _rich_table("Individual Select", headers, right=2)
        for cells, kept in isel:
            style = {True: "green", False: "red", None: "bold"}[kept]
            table.add_row(*[escape(c) for c in cells], style=style)
        console.print(table)
        console.print(escape(_rule_line(block)), style="dim")
    stages = Table(title="stages")
    for col in ("stage", "status", "seconds"):
        stages.add_column(col, justify="right" if col == "seconds" else "left")
    for s in report["stages"]:
        color = {"done": "green", "cached": "cyan", "failed": "red"}.get(s["status"], "white")
        stages.add_row(escape(s["name"]), f"[{color}]{escape(s['status'])}[/]", _num(s.get("seconds")))
    console.print(stages)


# --------------------------------------------------------------------------------------------------------------------
# plots


def plot(report: dict[str, Any], run_dir: Path) -> list[str]:
    """PNG plots beside the report (arms.png, forest.png, individual_select.png); returns their file names."""
    rows = _rows(report)
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [_plot_arms(report, rows, run_dir, plt)]
    if any(a.get("compare") for a in report["arms"].values()):
        files.append(plot_forest(report, run_dir))
    if (report.get("individual_select") or {}).get("rounds"):
        files.append(plot_progression(report["individual_select"], run_dir))
    return files


def _plot_arms(report: dict[str, Any], rows: dict[str, dict[str, Any]], run_dir: Path, plt: Any) -> str:
    """Bars per benchmark and arm with each benchmark's chance level; an "average" group with the score intervals."""
    benches = _benchmarks(report)
    health = report.get("benchmarks") or {}
    with_average = any("score_ci" in a for a in rows.values())
    groups = [*benches, "average"] if with_average else benches
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(groups) * max(1, len(rows)) / 2), 3.5))
    width = 0.8 / len(rows)
    for i, (name, arm) in enumerate(rows.items()):
        xs = [j + i * width for j in range(len(groups))]
        heights = [arm["metrics"].get(b, {}).get("score") or 0 for b in benches]
        if with_average:
            heights.append(arm.get("score") or 0)
        ax.bar(xs, heights, width, label=name)
        ci, score = arm.get("score_ci"), arm.get("score")
        if with_average and _ci(ci) != "-" and _num(score) != "-":
            err = [[max(score - ci[0], 0.0)], [max(ci[1] - score, 0.0)]]
            ax.errorbar([xs[-1]], [score], yerr=err, fmt="none", ecolor="k", capsize=3, label="_score_ci")
    labelled = False
    for j, b in enumerate(benches):
        chance = (health.get(b) or {}).get("chance")
        if _num(chance) == "-":
            continue
        left, right = j - width / 2 - 0.05, j + 0.8 - width / 2 + 0.05
        label = None if labelled else "chance"
        ax.hlines(chance, left, right, colors="k", linestyles="dashed", lw=1, label=label)
        labelled = True
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, rotation=20)
    ax.set_ylabel("score (0-100)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(run_dir / "arms.png", dpi=110)
    plt.close(fig)
    return "arms.png"


def plot_forest(report: dict[str, Any], run_dir: Path) -> str:
    """Δ vs the reference arm for the average and each benchmark, with its 95% interval; one row group per arm."""
    import matplotlib.pyplot as plt

    compared = [(name, a["compare"]) for name, a in report["arms"].items() if a.get("compare")]
    entries: list[tuple[str, str, dict[str, Any], int]] = []  # (arm, row label, comparison, arm index)
    for k, (name, c) in enumerate(compared):
        entries += [(name, f"{name}: average", c, k)]
        entries += [(name, f"{name}: {b}", x, k) for b, x in (c.get("benchmarks") or {}).items()]
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.32 * (len(entries) + len(compared))))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    y, ticks, labels, last = 0.0, [], [], None
    for name, label, x, k in entries:
        if last is not None and name != last:
            y += 0.8  # a gap between arms
        last = name
        delta, ci = x.get("delta"), x.get("ci")
        if _num(delta) != "-":
            err = [[max(delta - ci[0], 0.0)], [max(ci[1] - delta, 0.0)]] if _ci(ci) != "-" else None
            average = label.endswith(": average")
            ax.errorbar(
                [delta],
                [y],
                xerr=err,
                fmt="s" if average else "o",
                color=colors[k % len(colors)],
                mfc=colors[k % len(colors)] if _distinguishable(x) else "white",
                capsize=3,
                lw=2 if average else 1,
            )
        ticks.append(y)
        labels.append(label)
        y += 1
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"Δ vs {compared[0][1].get('to', 'reference')} (score points, 95% CI; hollow: CI contains 0 or none)")
    fig.tight_layout()
    fig.savefig(run_dir / "forest.png", dpi=110)
    plt.close(fig)
    return "forest.png"


def plot_progression(block: dict[str, Any], run_dir: Path) -> str:
    """The baseline's scores after each Individual Select round, and each candidate's score with its 95% interval."""
    import matplotlib.pyplot as plt

    rounds = block["rounds"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rounds)), 3.8))
    benches = sorted({b for r in rounds for b in r.get("baseline_metrics", {})})
    xs = list(range(len(rounds)))
    for b in benches:
        ax.plot(
            xs, [r.get("baseline_metrics", {}).get(b, float("nan")) for r in rounds], marker="o", alpha=0.5, label=b
        )
    averages = [r.get("baseline_score") for r in rounds]
    ax.plot(xs, [float("nan") if a is None else a for a in averages], marker="s", color="k", label="average")
    tolerance = block.get("tolerance")
    seen: set[str] = set()
    for x, r in zip(xs, rounds, strict=True):
        candidates = r.get("candidates") or []
        for i, c in enumerate(candidates):
            score = c.get("score")
            if _num(score) == "-":
                continue
            cx = x + (i - (len(candidates) - 1) / 2) * min(0.12, 0.6 / max(1, len(candidates)))
            kept = bool(c.get("kept"))
            err = None
            base = score - c["delta"] if _num(c.get("delta")) != "-" else None
            if base is not None and _ci(c.get("ci")) != "-":
                low, high = base + c["ci"][0], base + c["ci"][1]
                err = [[max(score - low, 0.0)], [max(high - score, 0.0)]]
            label = "kept" if kept else "rejected"
            ax.errorbar(
                [cx],
                [score],
                yerr=err,
                fmt="o" if kept else "x",
                color="tab:green" if kept else "tab:red",
                capsize=3,
                label=None if label in seen else f"candidate {label} (95% CI)",
            )
            seen.add(label)
            if base is not None and _num(tolerance) != "-":
                threshold = None if "threshold" in seen else f"keep threshold (baseline - {tolerance:g})"
                ax.hlines(base - tolerance, cx - 0.06, cx + 0.06, colors="grey", linestyles="dotted", label=threshold)
                seen.add("threshold")
    ax.set_xticks(xs, [r.get("category", "") for r in rounds], rotation=20)
    ax.set_ylabel("score after round")
    rule = block.get("rule")
    ax.set_title(f"Individual Select (rule: {rule})" if rule else "Individual Select", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "individual_select.png", dpi=110)
    plt.close(fig)
    return "individual_select.png"


# --------------------------------------------------------------------------------------------------------------------
# markdown


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (pipes in cells escaped)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def render_markdown(report: dict[str, Any], images: list[str]) -> str:
    """report.md: the arms table, the plots, comparisons, benchmark health, metrics, Individual Select, stages."""
    lines = [f"# mixlab report: {Path(report['recipe']).name}", "", f"mixlab {report.get('mixlab_version', '?')}", ""]
    if report.get("error"):
        lines += [f"**Run failed:** {report['error']}", ""]
    split = _split_lines(report)
    if split:
        lines += [*split, ""]
    headers, rows, notes = _arms_table(report)
    score_at = 3 + len(_benchmarks(report))
    md_rows = []
    for row in rows:
        score = f"**{row[score_at]}**" + (f" {row[score_at + 1]}" if row[score_at + 1] else "")
        md_rows.append([*row[:score_at], score, *row[score_at + 2 :]])
    lines += _md_table(headers, md_rows)
    if notes:
        lines += [""] + [f"{n}  " for n in notes[:-1]] + notes[-1:]
    lines += [""] + [f"![{img}]({img})" for img in images]
    headers, comparisons = _comparison_table(report)
    if comparisons:
        lines += ["", f"## Comparisons vs {_reference(report)}", ""]
        lines += _md_table(headers, comparisons)
    headers, health = _health_table(report)
    if health:
        lines += ["", "## Benchmark health", ""]
        flag = [[f"**{c}**" if c != "-" else c for c in cells] if at else cells for cells, at in health]
        lines += _md_table(headers, flag)
        lines += ["", HEALTH_LEGEND]
    lines += ["", "## Metrics", ""]
    for name, arm in _rows(report).items():
        lines.append(f"### {name}")
        if arm.get("sources"):
            lines.append("sources: " + ", ".join(f"{k} {v}" for k, v in arm["sources"].items()))
        if arm.get("ground_truth"):
            lines.append(f"ground truth: {json.dumps(arm['ground_truth'])}")
        for bench, metrics in arm["metrics"].items():
            lines.append(f"- {bench}: " + ", ".join(f"{k} {_num(v, '.2f')}" for k, v in metrics.items()))
        lines.append("")
    block = report.get("individual_select")
    if block:
        lines += ["## Individual Select", ""]
        rule = _rule_line(block)
        if rule:
            lines += [rule, ""]
        headers, isel = _isel_table(block)
        lines += _md_table(
            headers, [[f"**{c}**" if c else c for c in cells] if k is None else cells for cells, k in isel]
        )
        if block.get("selected_sources") is not None:
            lines += ["", "selected sources: " + (", ".join(block["selected_sources"]) or "-")]
        lines.append("")
    lines += ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {_num(s.get('seconds'))} |" for s in report["stages"]]
    return "\n".join(lines) + "\n"
