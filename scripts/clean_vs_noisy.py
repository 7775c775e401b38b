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
import json
import statistics
import sys
from pathlib import Path
from typing import NoReturn

from mixlab.outcomes import OUTCOMES_FILE, ItemOutcomes, read_outcomes
from mixlab.stats import Comparison, compare
from mixlab.store import Store

PAIRS = {  # category → (arm with the clean source, arm with the noisy source)
    "color": ("baseline", "color_noisy"),
    "count": ("baseline", "count_noisy"),
    "ocr": ("baseline", "ocr_noisy"),
    "chart": ("chart_clean", "chart_noisy"),
}


def fail(message: str) -> NoReturn:
    """Bad input: one message, exit code 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def per_seed_outcomes(run_dir: Path, report: dict, arm: str) -> list[dict[str, ItemOutcomes]]:
    """The arm's evaluation outcomes, one dict (benchmark → items) per seed, in the report's seed order."""
    keys = {s["name"]: s["key"] for s in report["stages"]}
    store, out = Store(run_dir), []
    for seed in report["seeds"]:
        name = next((n for n in (f"eval:{arm}@seed{seed}", f"eval:{arm}") if n in keys), None)
        if name is None:
            fail(f"{run_dir}: no evaluation of arm {arm!r} for seed {seed} in report.json")
        out.append(read_outcomes(store.stage_dir("eval", keys[name]) / OUTCOMES_FILE))
    return out


def cell(c: Comparison) -> str:
    assert c.ci is not None
    return f"{c.delta:+.2f} [{c.ci[0]:+.2f}, {c.ci[1]:+.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--floor", type=float, help="the noise floor (seed std of the reference arm's average)")
    args = parser.parse_args()
    path = args.run_dir / "report.json"
    if not path.is_file():
        fail(f"{path}: no such file; give the folder of a finished run of recipes/clean_vs_noisy.toml")
    report = json.loads(path.read_text())
    if len(report["seeds"]) < 2:
        fail("the run has one seed: intervals need the seeds of recipes/clean_vs_noisy.toml")
    baseline = [report["arms"]["baseline"]["per_seed"][str(s)]["score"] for s in report["seeds"]]
    floor = args.floor if args.floor is not None else statistics.stdev(baseline)
    source = "given" if args.floor is not None else f"this run's baseline over seeds {report['seeds']}"
    print(f"seeds {report['seeds']}; noise floor {floor:.2f} ({source}); three times it: {3 * floor:.2f}")
    rows = []
    for category, (clean_arm, noisy_arm) in PAIRS.items():
        if clean_arm in report["arms"] and noisy_arm in report["arms"]:
            clean = per_seed_outcomes(args.run_dir, report, clean_arm)
            noisy = per_seed_outcomes(args.run_dir, report, noisy_arm)
            rows.append((category, clean_arm, noisy_arm, compare(clean, noisy)))
    benchmarks = list(rows[0][3].benchmarks) if rows else []
    print(
        "| category | clean arm | noisy arm | clean − noisy, average [95% CI] | ≥ 3 × floor | "
        + " | ".join(benchmarks)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(benchmarks))
    for category, clean_arm, noisy_arm, effect in rows:
        assert effect.ci is not None
        if effect.ci[0] >= 3 * floor:
            verdict = "yes, the whole interval"
        else:
            verdict = "the estimate only" if effect.delta >= 3 * floor else "no"
        per_bench = " | ".join(cell(effect.benchmarks[b]) for b in benchmarks)
        print(f"| {category} | {clean_arm} | {noisy_arm} | {cell(effect)} | {verdict} | {per_bench} |")


if __name__ == "__main__":
    main()
