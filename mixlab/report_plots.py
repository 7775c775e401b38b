"""The report's PNG plots: arms × benchmarks with chance lines and score intervals, the forest plot of differences,
the Individual Select progression with interval bands. matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixlab.report_tables import benchmarks_of, distinguishable, fmt_ci, fmt_num, interval_of, rows_of


def plot(report: dict[str, Any], run_dir: Path) -> list[str]:
    """PNG plots beside the report (arms.png, forest.png, individual_select.png); returns their file names."""
    rows = rows_of(report)
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
    benches = benchmarks_of(report)
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
        ci, score = interval_of(arm.get("score_ci")), arm.get("score")
        if with_average and ci is not None and isinstance(score, int | float) and fmt_num(score) != "-":
            err = [[max(score - ci[0], 0.0)], [max(ci[1] - score, 0.0)]]
            ax.errorbar([xs[-1]], [score], yerr=err, fmt="none", ecolor="k", capsize=3, label="_score_ci")
    labelled = False
    for j, b in enumerate(benches):
        chance = (health.get(b) or {}).get("chance")
        if fmt_num(chance) == "-":
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
        delta, ci = x.get("delta"), interval_of(x.get("ci"))
        if isinstance(delta, int | float) and fmt_num(delta) != "-":
            err = [[max(delta - ci[0], 0.0)], [max(ci[1] - delta, 0.0)]] if ci is not None else None
            average = label.endswith(": average")
            ax.errorbar(
                [delta],
                [y],
                xerr=err,
                fmt="s" if average else "o",
                color=colors[k % len(colors)],
                mfc=colors[k % len(colors)] if distinguishable(x) else "white",
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
            if fmt_num(score) == "-":
                continue
            cx = x + (i - (len(candidates) - 1) / 2) * min(0.12, 0.6 / max(1, len(candidates)))
            kept = bool(c.get("kept"))
            err = None
            base = score - c["delta"] if fmt_num(c.get("delta")) != "-" else None
            if base is not None and fmt_ci(c.get("ci")) != "-":
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
            if base is not None and fmt_num(tolerance) != "-":
                threshold = None if "threshold" in seen else f"keep threshold (baseline - {tolerance:g})"
                ax.hlines(
                    base - tolerance,
                    cx - 0.06,
                    cx + 0.06,
                    colors="grey",
                    linestyles="dotted",
                    label=threshold or "_nolegend_",
                )
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
