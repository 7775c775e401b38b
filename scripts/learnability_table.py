"""Print docs/toyworld.md's learnability table from a run of recipes/toyworld_learnability.toml.

For each category with arms ``<cat>_without``, ``<cat>_clean``, ``<cat>_noisy`` and ``<cat>_clean_noisy``: the
category's accuracy on each toy benchmark (MMBench circular, SEED, MME acc) and the arms' average score with its 95%
interval (as the report gives it: over the benchmark items with one seed, seeds and items with several).

    python scripts/learnability_table.py runs/learnability/report.json
"""

from __future__ import annotations

import json
import sys

from mixlab.toyworld.benchmarks import MMBENCH_CATEGORIES, MME_SUBTASKS, SEED_CATEGORIES


def benchmark_metrics(category: str) -> list[tuple[str, str, str]]:
    """(label, benchmark, metric key) of every benchmark category that tests the toy category."""
    rows = [(f"MMBench {c}", "MMBench_toy", f"cat/{c}") for c, v in MMBENCH_CATEGORIES.items() if v[1] == category]
    rows += [(f"SEED {c}", "SEED_toy", f"cat/{c}") for c, v in SEED_CATEGORIES.items() if v[1] == category]
    rows += [(f"MME {c} acc", "MME_toy", f"{c}/acc") for c, v in MME_SUBTASKS.items() if v[1] == category]
    return rows


def average_with_interval(arm: dict) -> str:
    """The arm's average score and, where the report has it, its 95% interval: "77.1 [75.0, 79.2]"."""
    ci = arm.get("score_ci")
    return f"{arm['score']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def main(paths: list[str]) -> None:
    arms: dict = {}
    for path in paths:  # several reports of the same recipe's arms (e.g. a run of some arms only) are merged
        arms |= json.load(open(path))["arms"]
    cats = [name[: -len("_without")] for name in arms if name.endswith("_without")]
    tags = ("without", "clean", "noisy", "clean_noisy")
    print("| category | benchmark (category) | without the category | + clean source | + noisy source | + both |")
    print("|---|---|---|---|---|---|")
    for cat in cats:
        trio = [arms.get(f"{cat}_{tag}") for tag in tags]
        if None in trio[:3]:
            continue
        trio = [a or {"metrics": {}, "score": float("nan")} for a in trio]
        for label, bench, key in benchmark_metrics(cat):
            cells = [f"{a['metrics'].get(bench, {}).get(key, float('nan')):.1f}" for a in trio]
            print(f"| {cat} | {label} | " + " | ".join(cells) + " |")
        averages = [average_with_interval(a) for a in trio]
        print(f"| {cat} | **average score (all benchmarks)** | " + " | ".join(averages) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["runs/learnability/report.json"])
