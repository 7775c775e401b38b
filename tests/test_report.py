"""Rendering of report.json: report.md's tables, the PNG plots and the terminal tables, for old and new reports."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from mixlab.progress import console
from mixlab.report import plot, print_tables, render, render_markdown


def _arm(scores: dict[str, float], seeds: list[int], **extra: Any) -> dict[str, Any]:
    score = sum(scores.values()) / len(scores)
    return {
        "n_samples": 100,
        "sources": {"a": 100},
        "metrics": {b: {"score": s, "accuracy": s / 100} for b, s in scores.items()},
        "score": score,
        "model_dir": "/m",
        "per_seed": {str(s): {"metrics": {}, "score": score} for s in seeds},
        **extra,
    }


def _compare(delta: float, ci: list[float] | None, p: float | None, distinguishable: bool | None) -> dict[str, Any]:
    bench = {"delta": delta, "ci": ci, "p_better": p, "interval": "seeds+items", "mcnemar_p": None}
    bench |= {"seeds_to_decide": None, "items_limited": True}  # the items alone too few for this Δ
    return {
        "seeds_to_decide": 9,
        "items_limited": False,
        "to": "baseline",
        "delta": delta,
        "ci": ci,
        "p_better": p,
        "interval": "seeds+items",
        "distinguishable": distinguishable,
        "benchmarks": {"MME": bench, "POPE": {**bench, "delta": -0.5, "ci": [-2.0, -0.25]}},
    }


def new_report(seeds: list[int]) -> dict[str, Any]:
    """A report with every new key: three arms compared to "baseline", health, Individual Select, a soup."""
    kind = "seeds+items" if len(seeds) > 1 else "items"
    scores = {"MME": 60.0, "POPE": 80.0}
    return {
        "mixlab_version": "0.1",
        "recipe": "/x/study.toml",
        "seeds": seeds,
        "select_on": "dev",
        "stages": [{"name": "train:baseline", "status": "done", "seconds": 3.0}],
        "arms": {
            "baseline": _arm(scores, seeds, score_ci=[68.0, 72.0], score_interval=kind),
            "tied": _arm(
                {"MME": 60.5, "POPE": 80.1},
                seeds,
                score_ci=[68.1, 72.5],
                score_interval=kind,
                compare=_compare(0.3, [-1.25, 1.75], 0.62, False),
            ),
            "better": _arm(
                {"MME": 66.0, "POPE": 84.0},
                seeds,
                score_ci=[73.0, 77.0],
                score_interval=kind,
                compare=_compare(5.0, [3.5, 6.5], 0.99, True),
            ),
            "worse": _arm(
                {"MME": 38.0, "POPE": 70.0},
                seeds,
                score_ci=[None, None],  # an interval cut short: no half-width, no crash
                score_interval="none",
                compare=_compare(-16.0, None, None, None),
            ),
        },
        "benchmarks": {
            "MME": {"chance": 37.5, "noise": 0.012, "signal": 0.43, "snr": 35.8, "mdd": 2.5, "at_chance": ["worse"]},
            "POPE": {"chance": None, "noise": None, "signal": None, "snr": None, "mdd": None, "at_chance": []},
        },
        "unsplit_benchmarks": ["POPE"],
        "individual_select": {
            "rule": "ci",
            "tolerance": 0.5,
            "rounds": [
                {"category": "baseline", "candidates": [], "baseline_sources": ["a"], "baseline_score": 70.0},
                {
                    "category": "ocr",
                    "candidates": [
                        {
                            "source": "o1",
                            "score": 71.0,
                            "delta": 1.0,
                            "ci": [-0.5, 2.5],
                            "p_better": 0.8,
                            "kept": True,
                            "seeds_to_decide": 7,
                            "items_limited": False,
                        },
                        {"source": "o2", "score": 66.0, "delta": -4.0, "ci": None, "p_better": None, "kept": False},
                    ],
                    "baseline_sources": ["a", "o1"],
                    "baseline_score": 71.2,
                    "baseline_metrics": {"MME": 61.0, "POPE": 81.4},
                },
            ],
            "selected_sources": ["a", "o1"],
        },
        "soup": {
            "method": "uniform",
            "ingredients": {},
            "kept": [],
            "metrics": {"MME": {"score": 61.0}},
            "score": 61.0,
        },
    }


def old_report() -> dict[str, Any]:
    """A report written before intervals existed: no seeds, compare, benchmarks, rule or deltas."""
    return {
        "mixlab_version": "0.0.9",
        "recipe": "old.toml",
        "stages": [{"name": "train:a", "status": "cached", "seconds": 1.0}],
        "arms": {
            "a": {"n_samples": 3, "sources": {}, "metrics": {"MME": {"score": 50.0}}, "score": 50.0, "model_dir": "m"},
            "b": {"n_samples": 3, "sources": {}, "metrics": {"MME": {"score": 55.0}}, "score": 55.0, "model_dir": "m"},
        },
        "individual_select": {
            "rounds": [{"category": "c", "candidates": [{"source": "s", "score": 52.0, "kept": True}]}],
        },
    }


def _terminal(report: dict[str, Any], width: int = 250) -> str:
    """What print_tables shows on a terminal ``width`` columns wide (by default wide enough that no cell wraps)."""
    old = console.width
    console.width = width
    try:
        with console.capture() as captured:
            print_tables(report)
    finally:
        console.width = old
    return captured.get()


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_markdown_arms_table_three_seeds():
    md = render_markdown(new_report([0, 1, 2]), ["arms.png", "forest.png"])
    assert md.startswith("# mixlab report: study.toml\n")
    header = _line(md, "| arm |")
    assert "| seeds |" in header and "score ± 95% CI" in header and "Δ vs baseline [95% CI]" in header
    assert "P(better)" in header and "| interval |" in header
    assert _line(md, "| baseline |").split(" | ")[2:4] == ["3", "60.0"]
    assert "**70.0 ± 2.0**" in _line(md, "| baseline |") and "(reference)" in _line(md, "| baseline |")
    tied = _line(md, "| tied |")
    assert "**70.3 ± 2.2** ≈" in tied and "+0.30 [-1.25, +1.75]" in tied and "| 0.62 |" in tied
    assert "**75.0 ± 2.0** ▲" in _line(md, "| better |") and "+5.00 [+3.50, +6.50]" in _line(md, "| better |")
    worse = _line(md, "| worse |")
    assert "**54.0** |" in worse and "≈" not in worse and "| -16.00 |" in worse  # no interval: no mark, no ±
    assert "38.0 †" in worse  # at chance on MME
    assert "≈: not distinguishable from baseline" in md
    assert "seeds+items = training seeds and benchmark items" in md
    assert "One training seed" not in md
    assert md.index("| arm |") < md.index("![arms.png](arms.png)") < md.index("## Metrics") < md.index("## Stages")
    assert md.index("## Metrics") < md.index("except MME's points") < md.index("### baseline")  # the scales explained


def test_markdown_one_seed_note():
    md = render_markdown(new_report([0]), [])
    assert "One training seed: the intervals contain benchmark-item noise only" in md
    assert "items = benchmark items only" in md
    assert _line(md, "| tied |").split(" | ")[2] == "1"


def test_markdown_comparisons_health_dev_and_individual_select():
    md = render_markdown(new_report([0, 1, 2]), [])
    assert "## Comparisons vs baseline" in md
    assert "McNemar p: one seed, accuracy-type benchmarks only" in md  # every column of that table explained
    assert "| better | POPE | -0.50 | [-2.00, -0.25] | 0.99 | seeds+items | - | ▼ |" in md
    assert "| tied | average | +0.30 | [-1.25, +1.75] | 0.62 | seeds+items | - | ≈ | 9 |" in md
    assert "| tied | MME | +0.30 | [-1.25, +1.75] | 0.62 | seeds+items | - | ≈ | more items |" in md
    assert "| better | average | +5.00 | [+3.50, +6.50] | 0.99 | seeds+items | - | ▲ | - |" in md  # decided
    assert "| tied | MME | +0.30 | [-1.25, +1.75] | 0.62 | seeds+items | - | ≈ |" in md  # no "distinguishable" key
    assert "## Benchmark health" in md
    assert "| **MME** | **37.5** | **0.012** | **0.430** | **35.80** | **2.50** | **worse** |" in md
    assert "| POPE | - | - | - | - | - | - |" in md
    assert "See docs/decisions.md" in md
    assert (
        "decided on the dev part" in md and "Unsplit benchmarks" in md and "selected arms are optimistic): POPE." in md
    )
    assert "rule: ci (keep a candidate unless the upper end of its Δ's 95% CI is below -0.5)" in md
    assert "| round | candidate | score | delta | 95% CI | P(better) | kept | seeds to decide |" in md
    assert "| ocr | +o1 | 71.00 | +1.00 | [-0.50, +2.50] | 0.80 | kept | 7 |" in md
    assert "| ocr | +o2 | 66.00 | -4.00 | - | - | rejected | - |" in md
    assert "| **ocr** | **baseline (2 sources)** | **71.20** |" in md
    assert "selected sources: a, o1" in md


def test_markdown_select_on_all_has_no_dev_line():
    report = new_report([0, 1, 2])
    report["select_on"] = "all"
    del report["unsplit_benchmarks"]
    md = render_markdown(report, [])
    assert "dev part" not in md and "Unsplit" not in md


def test_markdown_tolerance_rule():
    report = new_report([0, 1, 2])
    report["individual_select"]["rule"] = "tolerance"
    md = render_markdown(report, [])
    assert "rule: tolerance (keep a candidate whose score is at least the baseline's minus 0.5)" in md


def test_old_report_renders_without_new_sections(tmp_path: Path):
    report = old_report()
    render(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# mixlab report: old.toml")
    assert _line(md, "| arm |") == "| arm | samples | seeds | MME | score |"
    assert "| a | 3 |  | 50.0 | **50.0** |" in md
    for absent in ("Δ vs", "≈", "## Benchmark health", "## Comparisons", "One training seed", "rule:", "dev part"):
        assert absent not in md
    assert "| c | +s | 52.00 | - | - | - | kept |" in md
    assert (tmp_path / "arms.png").stat().st_size > 1000
    assert (tmp_path / "individual_select.png").stat().st_size > 1000
    assert not (tmp_path / "forest.png").exists()


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_plot_writes_all_pngs(tmp_path: Path, seeds: list[int]):
    files = plot(new_report(seeds), tmp_path)
    assert files == ["arms.png", "forest.png", "individual_select.png"]
    for name in files:
        assert (tmp_path / name).stat().st_size > 1000


def test_plot_without_rounds_or_compare(tmp_path: Path):
    report = new_report([0, 1, 2])
    del report["individual_select"]
    for arm in report["arms"].values():
        arm.pop("compare", None)
    assert plot(report, tmp_path) == ["arms.png"]
    assert not (tmp_path / "individual_select.png").exists() and not (tmp_path / "forest.png").exists()


def test_plot_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.container import BarContainer

    seen: dict[str, Any] = {}
    close = plt.close

    def keep(fig: Any) -> None:
        seen.setdefault("figs", []).append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    plot(new_report([0, 1, 2]), tmp_path)
    arms_ax = seen["figs"][0].axes[0]
    chance = [c for c in arms_ax.collections if c.get_label() == "chance"]
    assert len(chance) == 1 and chance[0].get_segments()[0][0][1] == 37.5  # MME only: POPE's chance is null
    assert [t.get_text() for t in arms_ax.get_xticklabels()] == ["MME", "POPE", "average"]
    bars = [c for c in arms_ax.containers if not isinstance(c, BarContainer)]
    segments = [list(b.lines[2][0].get_segments()[0][:, 1]) for b in bars]
    assert segments == [[68.0, 72.0], [68.1, 72.5], [73.0, 77.0]]  # the averages' score_ci; none for "worse", soup
    forest_ax = seen["figs"][1].axes[0]
    labels = [t.get_text() for t in forest_ax.get_yticklabels()]
    assert labels[:3] == ["tied: average", "tied: MME", "tied: POPE"] and len(labels) == 9
    assert any(line.get_xdata()[0] == 0 for line in forest_ax.lines)  # the vertical line at 0
    tied_average = forest_ax.containers[0].lines[2][0].get_segments()[0]
    assert list(tied_average[:, 0]) == [-1.25, 1.75]
    progression_ax = seen["figs"][2].axes[0]
    candidates = [c for c in progression_ax.containers if c.get_label().startswith("candidate")]
    assert [c.get_label() for c in candidates] == ["candidate kept (95% CI)", "candidate rejected (95% CI)"]
    assert list(candidates[0].lines[2][0].get_segments()[0][:, 1]) == [69.5, 72.5]  # (score - delta) + ci
    assert candidates[1].has_yerr is False  # o2 has no interval
    assert "rule: ci" in progression_ax.get_title()


def test_terminal_tables():
    text = _terminal(new_report([0]))
    assert "arms × benchmarks" in text and "70.3 ± 2.2" in text and "≈" in text and "▲" in text
    delta_row = next(line for line in text.splitlines() if line.startswith("tied ") and "average" in line)
    assert delta_row.split() == ["tied", "average", "≈", "+0.30", "[-1.25,", "+1.75]", "0.62", "seeds+items"]
    assert "One training seed" in text
    assert "benchmark health" in text and "See docs/decisions.md" in text
    assert "Individual Select" in text and "rule: ci" in text and "rejected" in text
    assert "decided on the dev part" in text


def test_terminal_tables_fit_80_columns():
    """On an 80-column terminal the arms and Δ tables fit; cells keep their width, no cell is cut; a table that cannot
    fit is printed whole, for the terminal to wrap."""
    report = new_report([0, 1, 2])
    text = _terminal(report, width=80)
    assert "…" not in text
    arms_and_deltas = text.split("benchmark health")[0].splitlines()
    assert all(len(line) <= 80 for line in arms_and_deltas)
    assert _line(text, "tied ").split()[-4:] == ["70.3", "±", "2.2", "≈"]
    long = "a_selection_arm_with_a_long_descriptive_name"
    report["arms"] = {long if name == "better" else name: arm for name, arm in report["arms"].items()}
    text = _terminal(report, width=80)
    rows = [line for line in text.splitlines() if line.startswith(long)]
    assert "75.0 ± 2.0  ▲" in rows[0]  # the arms table: too wide even for one benchmark a part, printed whole
    delta = next(row for row in rows if " average " in row)  # the Δ table: whole, though wider than 80
    assert delta.split()[1:6] == ["average", "▲", "+5.00", "[+3.50,", "+6.50]"]


def test_terminal_arms_table_in_parts_when_benchmarks_are_many():
    """Forty benchmarks on 80 columns: the arms table comes in parts that each fit, every benchmark's score shown."""
    report = new_report([0, 1, 2])
    names = [f"task_{i:02d}" for i in range(40)]
    for k, arm in enumerate(report["arms"].values()):
        arm["metrics"] = {name: {"score": 10.0 + i + k / 10} for i, name in enumerate(names)}
    report["benchmarks"] = {}
    text = _terminal(report, width=80)
    parts = [line for line in text.splitlines() if "arms × benchmarks" in line]
    assert len(parts) > 1 and all(f"of {len(parts)}" in line for line in parts)
    arms_lines = text.split("Δ vs baseline")[0].splitlines()
    assert all(len(line) <= 80 for line in arms_lines)
    shown = " ".join(line for line in arms_lines if line.startswith("tied "))
    assert all(f"{10.0 + i + 0.1:.1f}" in shown.split() for i in range(40))  # every score of "tied", once per part
    assert shown.count("70.3 ± 2.2") == len(parts)


def test_terminal_flags_benchmarks_at_chance(monkeypatch: pytest.MonkeyPatch):
    printed: list[Any] = []
    original = console.print

    def spy(*objects: Any, **kwargs: Any) -> None:
        printed.extend(objects)
        original(*objects, **kwargs)

    monkeypatch.setattr(console, "print", spy)
    with console.capture():
        print_tables(new_report([0, 1, 2]))
    health = next(t for t in printed if getattr(t, "title", None) == "benchmark health")
    assert list(health.columns[0].cells) == ["MME", "POPE"]
    assert [row.style for row in health.rows] == ["bold red", None]


def test_nulls_do_not_crash(tmp_path: Path):
    report = new_report([0])
    for arm in report["arms"].values():
        arm["score_ci"] = None
        if "compare" in arm:
            arm["compare"] = _compare(0.1, None, None, None)
    report["benchmarks"]["MME"] = dict.fromkeys(("chance", "noise", "signal", "snr", "mdd", "at_chance"))
    report["individual_select"]["tolerance"] = None
    report["soup"]["score"] = None
    render(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "±" not in md and "| score | interval |" in md
    assert "≈" not in md and "| MME | - | - | - | - | - | - |" in md
    assert "rule: ci (keep a candidate unless the upper end of its Δ's 95% CI is below minus the tolerance)" in md
    assert (tmp_path / "forest.png").stat().st_size > 1000


def test_malformed_report_still_raises():
    report = copy.deepcopy(old_report())
    del report["arms"]["a"]["metrics"]
    with pytest.raises(KeyError):
        render_markdown(report, [])


def test_markdown_names_the_code_that_ran_when_it_is_a_checkout():
    report = new_report([0])
    report["mixlab_code"] = "mixlab-0.1.0+0123456789abcdef"
    assert "\nmixlab 0.1 (code mixlab-0.1.0+0123456789abcdef)\n" in render_markdown(report, [])
    report["mixlab_code"] = "mixlab-0.1.0"  # a release: its version says it all
    assert "\nmixlab 0.1\n" in render_markdown(report, [])


def test_individual_select_own_items_columns():
    """Candidates judged on their category's own items too: two more columns, and the rule line says so."""
    report = new_report([0, 1, 2])
    o1, o2 = report["individual_select"]["rounds"][1]["candidates"]
    o1["own_items"] = {"delta": 2.0, "ci": [-3.0, 7.5], "p_better": 0.8, "items": 40, "passed": True}
    o2["own_items"] = {"delta": -21.0, "ci": [-30.25, -11.0], "p_better": 0.0, "items": 40, "passed": False}
    md = render_markdown(report, [])
    assert "| round | candidate | score | delta | 95% CI | P(better) | own items delta | own 95% CI | kept |" in md
    assert "| ocr | +o2 | 66.00 | -4.00 | - | - | -21.00 | [-30.25, -11.00] | rejected |" in md
    assert "on the average and on its category's own items (ocr: `category_items`)" in md
    assert "own items" in _terminal(report) and "[-30.25, -11.00]" in _terminal(report)
    assert "own items" not in render_markdown(new_report([0]), [])  # no own items judged: the table as before


def test_an_interval_end_near_zero_shows_its_side_of_zero():
    """The verdict follows the sign of the interval's ends: one that rounds to 0.00 is shown with one digit."""
    from mixlab.report_tables import fmt_ci

    assert fmt_ci([0.004852, 4.0027]) == "[+0.005, +4.00]"
    assert fmt_ci((-0.0012, 2.5)) == "[-0.001, +2.50]"
    assert fmt_ci([0.0, 1.0]) == "[+0.00, +1.00]"
    assert fmt_ci([float("nan"), 1.0]) == "-" and fmt_ci(None) == "-"
