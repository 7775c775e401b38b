"""Print docs/toyworld.md's three-seed clean-against-noisy table from a run of recipes/clean_vs_noisy.toml.

For each category: the arm trained with its clean source minus the arm trained with its noisy source (colour, count,
OCR: the baseline against the baseline with the source swapped; charts: the baseline plus each source), paired by seed
and by benchmark item, on the average over all benchmarks and on each benchmark. Each effect is set against three
times the noise floor: the seed std of the reference arm's average, given with ``--floor`` (docs/toyworld.md measures
it with five seeds) or, without it, this run's baseline over its seeds.

    python scripts/clean_vs_noisy.py runs/clean_vs_noisy --floor 0.89
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from mixlab.compare import compare_arms
from mixlab.errors import UserError
from mixlab.run_folder import read_report
from mixlab.stats import Comparison

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
