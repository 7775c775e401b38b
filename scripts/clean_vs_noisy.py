"""Print docs/toyworld.md's three-seed clean-against-noisy table from a run of recipes/clean_vs_noisy.toml.

For each category: the arm trained with its clean source minus the arm trained with its noisy source (colour, count,
OCR: the baseline against the baseline with the source swapped; charts: the baseline plus each source), paired by seed
and by benchmark item, on the average over all benchmarks and on each benchmark. Each effect is set against three
times the noise floor: the seed std of the reference arm's average, given with ``--floor`` (docs/toyworld.md measures
it with five seeds) or, without it, this run's baseline over its seeds.

A second table gives each effect on the category's own items: the benchmark categories that test it (the toy world's
manifest says which; charts: MMBench's chart_reasoning and SEED's Visual Reasoning), the other items left out, with
the same pairing and interval. It shows how much of an effect the average dilutes.

    python scripts/clean_vs_noisy.py runs/clean_vs_noisy --floor 0.89
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from mixlab.compare import arm_evaluations, compare_arms
from mixlab.components import Evaluation
from mixlab.decisions import Decisions
from mixlab.errors import UserError
from mixlab.run_folder import read_report
from mixlab.sections import RunSection
from mixlab.stats import Comparison, headline

PAIRS = {  # category → (arm with the clean source, arm with the noisy source)
    "color": ("baseline", "color_noisy"),
    "count": ("baseline", "count_noisy"),
    "ocr": ("baseline", "ocr_noisy"),
    "chart": ("chart_clean", "chart_noisy"),
}


def cell(c: Comparison) -> str:
    assert c.ci is not None
    return f"{c.delta:+.2f} [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}]"


def table(run_dir: Path, floor: float | None) -> None:
    report = read_report(run_dir)
    seeds = report.get("seeds") or []
    if len(seeds) < 2:
        raise UserError(f"{run_dir}: the run has one seed; intervals need the seeds of recipes/clean_vs_noisy.toml")
    if floor is None:
        floor = statistics.stdev(report["arms"]["baseline"]["per_seed"][str(s)]["score"] for s in seeds)
        source = f"this run's baseline over seeds {seeds}"
    else:
        source = "given"
    print(f"seeds {seeds}; noise floor {floor:.2f} ({source}); three times it: {3 * floor:.2f}")
    rows = [
        (category, clean, noisy, compare_arms(run_dir, clean, noisy)[0])
        for category, (clean, noisy) in PAIRS.items()
        if clean in report["arms"] and noisy in report["arms"]
    ]
    benchmarks = list(rows[0][3].benchmarks) if rows else []
    print(
        "| category | clean arm | noisy arm | clean − noisy, average [95% CI] | ≥ 3 × floor | "
        + " | ".join(benchmarks)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(benchmarks))
    for category, clean, noisy, effect in rows:
        assert effect.ci is not None
        if effect.ci[0] >= 3 * floor:
            verdict = "yes, the whole interval"
        else:
            verdict = "the estimate only" if effect.delta >= 3 * floor else "no"
        per_bench = " | ".join(cell(effect.benchmarks[b]) for b in benchmarks)
        print(f"| {category} | {clean} | {noisy} | {cell(effect)} | {verdict} | {per_bench} |")
    own_items_table(run_dir, [(category, clean, noisy) for category, clean, noisy, _ in rows])


def item_categories(run_dir: Path, sizes: dict[str, int]) -> dict[str, dict[str, str]]:
    """Benchmark → item index → the toy category it tests, from the run's toy world whose benchmarks have ``sizes``
    rows (its manifest maps each benchmark category to a toy category)."""
    csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 images
    for manifest in sorted(run_dir.glob("toyworld/*/manifest.json")):
        benchmarks = json.loads(manifest.read_text())["benchmarks"]
        if any(benchmarks.get(b, {}).get("n_rows") != n for b, n in sizes.items()):
            continue
        out = {}
        for bench, info in benchmarks.items():
            with open(manifest.parent / info["tsv"], newline="", encoding="utf-8") as f:
                rows = csv.DictReader(f, delimiter="\t")
                out[bench] = {row["index"]: info["categories"][row["category"]] for row in rows}
        return out
    raise UserError(f"{run_dir}: no toy world under toyworld/ with benchmarks of {sizes} rows (the run's own world)")


def own_items(evaluation: Evaluation, category: str, tested: dict[str, dict[str, str]]) -> Evaluation:
    """The evaluation on the items that test ``category`` only (benchmarks without such items left out)."""
    metrics, outcomes = {}, {}
    for bench, items in evaluation.outcomes.items():
        keep = np.array([tested[bench].get(i) == category for i in items.items])
        if keep.any():
            outcomes[bench] = items.subset(keep)
            metrics[bench] = {"score": float(headline(outcomes[bench]))}
    return Evaluation(metrics, outcomes)


def own_items_table(run_dir: Path, pairs: list[tuple[str, str, str]]) -> None:
    report = read_report(run_dir)
    seeds = sorted(int(s) for s in report.get("seeds") or [0])
    decisions = Decisions(RunSection(name="own_items"))
    evaluations = {arm: arm_evaluations(run_dir, report, arm) for _, clean, noisy in pairs for arm in (clean, noisy)}
    first = next(iter(next(iter(evaluations.values())).values()))
    tested = item_categories(run_dir, {b: len(o) for b, o in first.outcomes.items()})
    print("\n| category | its items | clean − noisy on its items [95% CI] | per benchmark |")
    print("|---|---|---|---|")
    for category, clean, noisy in pairs:
        a, b = ([own_items(evaluations[arm][s], category, tested) for s in seeds] for arm in (clean, noisy))
        effect = decisions.compare(a, b)
        items = sum(len(o) for o in a[0].outcomes.values())
        per_bench = ", ".join(f"{bench} {cell(c)}" for bench, c in effect.benchmarks.items())
        print(f"| {category} | {items} | {cell(effect)} | {per_bench} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--floor", type=float, help="the noise floor (seed std of the reference arm's average)")
    args = parser.parse_args()
    try:
        table(args.run_dir, args.floor)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
