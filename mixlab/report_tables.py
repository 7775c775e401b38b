"""The report's tables, built once as text and drawn both as report.md and as rich terminal tables: arms with
intervals and comparisons, benchmark health, Individual Select rounds, metrics and stages."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from rich import box
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from mixlab.progress import console

# --------------------------------------------------------------------------------------------------------------------
# rendering helpers: every table is built once as text cells, then drawn as markdown and as a rich table

SAME, BETTER, WORSE, AT_CHANCE = "≈", "▲", "▼", "†"
INTERVAL_KINDS = {
    "seeds+items": "training seeds and benchmark items",
    "items": "benchmark items only (no seed noise)",
    "seeds": "training seeds only (no item noise)",
    "none": "no interval",
}
COMPARISON_LEGEND = (
    "Δ: the arm's score minus the reference's, in score points, with its 95 % interval; P(better): share of resampled "
    "differences above 0; McNemar p: one seed, accuracy-type benchmarks only, the exact test on the items the two "
    "models disagree on (about these items, not about training noise); seeds to decide: for a Δ not distinguishable "
    "from 0, the fewest seeds that would tell a true difference of this size from 0 four times in five, on the same "
    'items ("more items": the items alone are too few for it, more seeds would not do); "-": not applicable '
    "(docs/decisions.md)."
)
HEALTH_LEGEND = (
    "chance: a random guesser's score; noise: seed std / mean; signal: spread of the arms / mean; SNR = signal / noise "
    "(below ~1: differences are mostly seed noise); MDD: smallest difference found 80 % of the time (score points); "
    'at chance: arms not distinguishably above chance (interval reaching down to it, or below); "-": none, or not '
    "computed (noise and SNR need two seeds or more). See docs/decisions.md."
)


def fmt_num(value: Any, spec: str = ".1f") -> str:
    """A number formatted with spec, or "-" for null, NaN and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return format(value, spec)


def interval_of(ci: Any) -> tuple[float, float] | None:
    """A usable interval (two finite numbers), or None."""
    if not isinstance(ci, list | tuple) or len(ci) != 2 or "-" in (fmt_num(ci[0]), fmt_num(ci[1])):
        return None
    return float(ci[0]), float(ci[1])


def fmt_ci(ci: Any, spec: str = "+.2f") -> str:
    """An interval as "[lo, hi]", or "-" without one. An end that would read as zero but is not shows one significant
    digit (+0.005), so that its side of 0, which the verdict follows, can be read."""
    if interval_of(ci) is None:
        return "-"
    return f"[{_end(ci[0], spec)}, {_end(ci[1], spec)}]"


def _end(value: float, spec: str) -> str:
    text = format(value, spec)
    return text if value == 0 or float(text) != 0 else format(value, "+.1g" if "+" in spec else ".1g")


def _half_width(ci: Any) -> float | None:
    """Half the width of an interval (None without a usable one)."""
    if fmt_ci(ci) == "-":
        return None
    return (ci[1] - ci[0]) / 2


def distinguishable(comparison: dict[str, Any]) -> bool | None:
    """The comparison's verdict: its own ``distinguishable``, else whether its interval excludes 0."""
    if "distinguishable" in comparison:
        return comparison["distinguishable"]
    ci = interval_of(comparison.get("ci"))
    return None if ci is None else not (ci[0] <= 0.0 <= ci[1])


def plan_cell(comparisons: Sequence[dict[str, Any]]) -> str:
    """What would decide comparisons none of which is decided yet (report.json's ``seeds_to_decide`` and
    ``items_limited``): the fewest seeds any of them needs, else "more items" when each is limited by its items;
    "-" when one is decided already or nothing can be said."""
    if not comparisons or any(distinguishable(c) is not False for c in comparisons):
        return "-"
    seeds = [n for c in comparisons if isinstance(n := c.get("seeds_to_decide"), int)]
    if seeds:
        return str(min(seeds))
    return "more items" if all(c.get("items_limited") for c in comparisons) else "-"


def _mark(comparison: dict[str, Any] | None) -> str:
    """≈ when the interval of Δ contains 0, ▲ / ▼ when it lies above / below 0, "" without an interval."""
    if not comparison:
        return ""
    verdict = distinguishable(comparison)
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
    benches = benchmarks_of(report)
    rows = rows_of(report)
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
            cell = fmt_num(arm["metrics"][b].get("score")) if b in arm["metrics"] else "-"
            if name in chance.get(b, []):
                cell, flagged = f"{cell} {AT_CHANCE}", True
            cells.append(cell)
        half = _half_width(arm.get("score_ci"))
        score = fmt_num(arm.get("score")) + ("" if half is None else f" ± {half:.1f}")
        mark = _mark(arm.get("compare"))
        seeds = _n_seeds(report, arm)
        row = [name, str(arm.get("n_samples", "")), "" if seeds is None else str(seeds), *cells, score, mark]
        if with_interval:
            row.append(arm.get("score_interval") or "-")
        if with_compare:
            c = arm.get("compare")
            if c:
                ci = fmt_ci(c.get("ci"))
                delta = fmt_num(c.get("delta"), "+.2f") + ("" if ci == "-" else f" {ci}")
                row += [delta, fmt_num(c.get("p_better"), ".2f")]
            else:
                row += ["(reference)" if name == reference else "-", "-"]
        table.append(row)
    notes = []
    if any(row[len(benches) + 4] for row in table):
        notes.append(
            f"{SAME}: not distinguishable from {reference} (the 95% CI of Δ contains 0); {BETTER} / {WORSE}: "
            f"distinguishably better / worse. P(better): share of resampled differences above 0 (not a p-value). "
            "Any other pair: mixlab compare RUN_DIR A B (gives A − B)."
        )
    if with_interval:
        kinds = sorted({a["score_interval"] for a in rows.values() if a.get("score_interval")})
        notes.append("interval: " + "; ".join(f"{k} = {INTERVAL_KINDS.get(k, k)}" for k in kinds) + ".")
    if flagged:
        notes.append(
            f"{AT_CHANCE}: the arm is not distinguishably above this benchmark's chance level (see benchmark health)."
        )
    if _one_seed(report):
        notes.append(
            "⚠ One training seed: the intervals contain benchmark-item noise only, not seed (training) noise; "
            "they are too narrow to conclude that one mix beats another (the marks compare these items only). Set "
            "[run] seeds = [0, 1, 2] for intervals over training seeds too (three trainings per arm)."
        )
    return headers, table, notes


def _comparison_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per arm compared to the reference: Δ, its interval and P(better) for the average and each benchmark."""
    headers = ["arm", "benchmark", "Δ", "95% CI", "P(better)", "interval", "McNemar p", "", "seeds to decide"]
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
                    fmt_num(x.get("delta"), "+.2f"),
                    fmt_ci(x.get("ci")),
                    fmt_num(x.get("p_better"), ".2f"),
                    x.get("interval") or "-",
                    fmt_num(x.get("mcnemar_p"), ".3g"),
                    _mark(x),
                    plan_cell([x]),
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
            fmt_num(h.get("chance")),
            fmt_num(h.get("noise"), ".3f"),
            fmt_num(h.get("signal"), ".3f"),
            fmt_num(h.get("snr"), ".2f"),
            fmt_num(h.get("mdd"), ".2f"),
            ", ".join(at) or "-",
        ]
        table.append((cells, bool(at)))
    return headers, table


def _align_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The selected alignment pools ([model.align] and each arm's `align`): sizes and, where samples carry a noise
    flag, the noisy samples kept and the share removed."""
    headers = ["alignment of", "pool", "selected", "noisy in pool", "noisy kept", "noisy removed"]
    entries = [("[model.align]", report["align_selection"])] if report.get("align_selection") else []
    entries += [(name, arm["align_selection"]) for name, arm in rows_of(report).items() if arm.get("align_selection")]
    table = []
    for name, a in entries:
        removed = a.get("noisy_removed")
        table.append(
            [
                name,
                str(a["n_pool"]),
                str(a["n_selected"]),
                str(a.get("noisy_in_pool", "-")),
                str(a.get("noisy_kept", "-")),
                "-" if removed is None else f"{removed:.0%}",
            ]
        )
    return headers, table


def _rule_line(block: dict[str, Any]) -> str:
    """Individual Select's keep rule, in words (and the rounds judged on their own items too)."""
    rule, tol = block.get("rule"), fmt_num(block.get("tolerance"), "g")
    minus = "minus the tolerance" if tol == "-" else f"-{tol}"
    if rule == "ci":
        line = f"rule: ci (keep a candidate unless the upper end of its Δ's 95% CI is below {minus})"
    elif rule == "tolerance":
        line = (
            f"rule: tolerance (keep a candidate whose score is at least the baseline's {minus.replace('-', 'minus ')})"
        )
    else:
        return "" if tol == "-" else f"rule: tolerance {tol}"
    judged = _own_items_rounds(block)
    if judged:
        line += f", on the average and on its category's own items ({', '.join(judged)}: `category_items`)"
    return line


def _own_items_rounds(block: dict[str, Any]) -> list[str]:
    """The rounds whose candidates were judged on their own category's items too."""
    rounds = block.get("rounds") or []
    return [r.get("category", "") for r in rounds if any("own_items" in c for c in r.get("candidates") or [])]


def _isel_table(block: dict[str, Any]) -> tuple[list[str], list[tuple[list[str], bool | None]]]:
    """Individual Select rounds: each candidate's score, Δ, interval, P(better) and verdict, then the new baseline."""
    rounds = block.get("rounds") or []
    own = bool(_own_items_rounds(block))
    headers = ["round", "candidate", "score", "delta", "95% CI", "P(better)"]
    headers += ["own items delta", "own 95% CI"] if own else []
    headers += ["kept", "seeds to decide"]
    table: list[tuple[list[str], bool | None]] = []
    for r in rounds:
        for c in r.get("candidates") or []:
            cells = [
                r.get("category", ""),
                f"+{c.get('source', '?')}",
                fmt_num(c.get("score"), ".2f"),
                fmt_num(c.get("delta"), "+.2f"),
                fmt_ci(c.get("ci")),
                fmt_num(c.get("p_better"), ".2f"),
            ]
            if own:
                items = c.get("own_items") or {}
                cells += [fmt_num(items.get("delta"), "+.2f"), fmt_ci(items.get("ci"))]
            judged = [c, *([c["own_items"]] if own and c.get("own_items") else [])]
            cells += ["kept" if c.get("kept") else "rejected", plan_cell(judged)]
            table.append((cells, bool(c.get("kept"))))
        sources = r.get("baseline_sources")
        count = "" if sources is None else f" ({len(sources)} source{'' if len(sources) == 1 else 's'})"
        what = f"baseline{count}"
        blank = [""] * (len(headers) - 3)  # the baseline row
        table.append(([r.get("category", ""), what, fmt_num(r.get("baseline_score"), ".2f"), *blank], None))
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


def benchmarks_of(report: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for arm in report["arms"].values():
        names += [b for b in arm["metrics"] if b not in names]
    return names


def rows_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = dict(report["arms"])
    if "soup" in report:
        rows[f"soup ({report['soup']['method']})"] = report["soup"]
    return rows


# --------------------------------------------------------------------------------------------------------------------
# terminal


def _rich_table(title: str, headers: list[str], right: int = 1, rows: Sequence[list[str]] = ()) -> Table:
    """A rich table whose first ``right`` columns are left-aligned and the rest right-aligned. With ``rows`` (plain
    text) each column is as wide as its widest cell or its header; where that is wider than the terminal, headers
    fold at 7 characters. The table's width is known before it prints: ``_table_width``."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    widths: Sequence[int | None] = [None] * len(headers)
    if rows:  # headers whole where the table then fits the terminal, else folded at 7 characters
        widths = _column_widths(headers, rows, None)
        if _table_width(widths) > console.width:
            widths = _column_widths(headers, rows, 7)
    for i, (h, width) in enumerate(zip(headers, widths, strict=True)):
        justify: Literal["left", "right"] = "left" if i < right else "right"
        table.add_column(escape(h), justify=justify, overflow="fold", width=width)
    table.columns[0].style = "bold"
    return table


def _column_widths(headers: list[str], rows: Sequence[list[str]], cap: int | None) -> list[int]:
    """Each column's width: its widest cell, or its header where wider (whole; with ``cap``, its longest word up to
    ``cap`` characters)."""
    words = [len(h) if cap is None else max((len(w) for w in h.split()), default=0) for h in headers]
    return [
        max(max((len(r[i]) for r in rows), default=0), word if cap is None else min(word, cap))
        for i, word in enumerate(words)
    ]


def _table_width(widths: list[int]) -> int:
    """The printed width of a table with these column widths (each padded by a space on its right, one between)."""
    return sum(widths) + 2 * len(widths) - 1


def _arms_tables(headers: list[str], rows: list[list[str]], score_at: int) -> list[Table]:
    """The terminal's arms tables: arm, samples, seeds, as many benchmarks as fit the terminal (one at least), the
    score and the mark; more tables for the other benchmarks. Interval kinds are in the notes, Δ in its own table."""
    widths = _column_widths([*headers[: score_at + 1], ""], [r[: score_at + 2] for r in rows], 7)
    fixed = [widths[i] for i in (0, 1, 2, score_at, score_at + 1)]
    parts: list[list[int]] = []
    for i in range(3, score_at):
        if parts and _table_width(fixed + [widths[j] for j in parts[-1]] + [widths[i]]) <= console.width:
            parts[-1].append(i)
        else:
            parts.append([i])
    tables = [_arms_table_of(headers, rows, score_at, p) for p in parts or [[]]]
    for k, table in enumerate(tables if len(tables) > 1 else []):
        table.title = f"{table.title}, part {k + 1} of {len(tables)}"
    return tables


def _arms_table_of(headers: list[str], rows: list[list[str]], score_at: int, benches: list[int]) -> Table:
    """One arms table with the benchmark columns ``benches``."""
    columns = [0, 1, 2, *benches, score_at]
    shown = [[row[i] for i in columns] + [row[score_at + 1]] for row in rows]
    table = _rich_table("arms × benchmarks (score, 0-100)", [headers[i] for i in columns] + [""], rows=shown)
    for cells in shown:
        color = {SAME: "yellow", BETTER: "green", WORSE: "red"}.get(cells[-1], "white")
        score, mark = f"[bold green]{escape(cells[-2])}[/]", f"[{color}]{cells[-1]}[/]"
        table.add_row(*[escape(c) for c in cells[:-2]], score, mark)
    return table


def _width(table: Table) -> int:
    """The narrowest width a table prints at without cutting a cell: its columns' set widths, else rich's measure."""
    widths = [column.width for column in table.columns]
    if all(w is not None for w in widths):
        return _table_width([w for w in widths if w is not None])
    return Measurement.get(console, console.options.update_width(10**6), table).minimum


def _show(table: Table) -> None:
    """Print a table whole: one wider than the terminal at its own width (the terminal wraps its lines), not cut."""
    terminal = console.width
    console.width = max(terminal, _width(table))  # rich never prints wider than the console
    try:
        console.print(table)
    finally:
        console.width = terminal


def print_tables(report: dict[str, Any]) -> None:
    """The report's tables on the terminal: arms, comparisons, benchmark health, alignment data, Individual Select,
    stages."""
    if report.get("error"):
        console.print(f"[bold red]run failed:[/] {escape(str(report['error']))}")
    for line in _split_lines(report):
        console.print(f"[yellow]{escape(line)}[/]")
    headers, rows, notes = _arms_table(report)
    score_at = 3 + len(benchmarks_of(report))
    for table in _arms_tables(headers, rows, score_at):
        _show(table)
    for note in notes:
        console.print(escape(note), style="yellow" if note.startswith("⚠") else "dim")
    headers, rows = _comparison_table(report)
    if rows:  # on the terminal (80 columns): the mark beside the benchmark; McNemar's p and seeds in report.md only
        order = [0, 1, 7, 2, 3, 4, 5]
        headers, rows = [headers[i] for i in order], [[row[i] for i in order] for row in rows]
        table = _rich_table(f"Δ vs {_reference(report)} (score points)", headers, right=3, rows=rows)
        for row in rows:
            table.add_row(*[escape(c) for c in row])
        _show(table)
    headers, health = _health_table(report)
    if health:
        table = _rich_table("benchmark health", headers, rows=[cells for cells, _ in health])
        for cells, flagged in health:
            table.add_row(*[escape(c) for c in cells], style="bold red" if flagged else None)
        _show(table)
        console.print(escape(HEALTH_LEGEND), style="dim")
    headers, aligns = _align_table(report)
    if aligns:
        table = _rich_table("alignment data", headers, rows=aligns)
        for cells in aligns:
            table.add_row(*[escape(c) for c in cells])
        _show(table)
    block = report.get("individual_select")
    if block:
        headers, isel = _isel_table(block)
        table = _rich_table("Individual Select", headers, right=2, rows=[cells for cells, _ in isel])
        for cells, kept in isel:
            style = {True: "green", False: "red", None: "bold"}[kept]
            table.add_row(*[escape(c) for c in cells], style=style)
        _show(table)
        console.print(escape(_rule_line(block)), style="dim")
    stages = Table(title="stages")
    for col in ("stage", "status", "seconds"):
        stages.add_column(col, justify="right" if col == "seconds" else "left")
    for s in report["stages"]:
        color = {"done": "green", "cached": "cyan", "failed": "red"}.get(s["status"], "white")
        stages.add_row(escape(s["name"]), f"[{color}]{escape(s['status'])}[/]", fmt_num(s.get("seconds")))
    _show(stages)


METRICS_LEGEND = (
    "Each benchmark's metrics as its evaluator names them. `score` is the 0-100 headline the averages use; the others "
    "keep their benchmark's own scale: percentages (`acc`, `overall`, `cat/<category>`), except MME's points (a "
    "subtask `<s>` = `<s>/acc` + `<s>/acc+`, out of 200; `perception`, `cognition` and `total` their sums). "
    "`items`: the questions a test- or dev-part score is made of. docs/evaluators.md lists every benchmark's metrics."
)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (pipes in cells escaped)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def render_markdown(report: dict[str, Any], images: list[str]) -> str:
    """report.md: the arms table, the plots, comparisons, benchmark health, alignment data, metrics, Individual
    Select, stages."""
    version = f"mixlab {report.get('mixlab_version', '?')}"
    code = str(report.get("mixlab_code", ""))
    if "+" in code:  # from a source checkout: the hash of the code that ran, as the cache keys see it
        version += f" (code {code})"
    lines = [f"# mixlab report: {Path(report['recipe']).name}", "", version, ""]
    if report.get("error"):
        lines += [f"**Run failed:** {report['error']}", ""]
    split = _split_lines(report)
    if split:
        lines += [*split, ""]
    headers, rows, notes = _arms_table(report)
    score_at = 3 + len(benchmarks_of(report))
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
        lines += ["", COMPARISON_LEGEND]
    headers, health = _health_table(report)
    if health:
        lines += ["", "## Benchmark health", ""]
        flag = [[f"**{c}**" if c != "-" else c for c in cells] if at else cells for cells, at in health]
        lines += _md_table(headers, flag)
        lines += ["", HEALTH_LEGEND]
    headers, aligns = _align_table(report)
    if aligns:
        lines += ["", "## Alignment data", ""]
        lines += _md_table(headers, aligns)
    lines += ["", "## Metrics", "", METRICS_LEGEND, ""]
    for name, arm in rows_of(report).items():
        lines.append(f"### {name}")
        if arm.get("sources"):
            lines.append("sources: " + ", ".join(f"{k} {v}" for k, v in arm["sources"].items()))
        if arm.get("ground_truth"):
            lines.append(f"ground truth: {json.dumps(arm['ground_truth'])}")
        for bench, metrics in arm["metrics"].items():
            lines.append(f"- {bench}: " + ", ".join(f"{k} {fmt_num(v, '.2f')}" for k, v in metrics.items()))
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
    lines += [f"| {s['name']} | {s['status']} | {fmt_num(s.get('seconds'))} |" for s in report["stages"]]
    return "\n".join(lines) + "\n"
