"""Trainings per hour for a seeds × arms study on this machine: one process using every core (`inline`, the
default) against single-thread worker processes side by side (`[run.executor] type = "local"`, one thread each);
with `--packing`, the study inline with the trainer's defaults (padded batches, vision tower run every step: before)
against `packing = true` and `vision_cache = true` (padding-free batches, the frozen tower's features computed once
per image and shared by the run's trainings: after).

Both runs train the same arms × seeds on the toy world with the tiny LLaVA (no tower pretraining, no alignment, so
the trainings dominate), each in a fresh run folder, one after the other. The result of each training does not depend
on the executor (tests/test_executors.py), so this measures only where the time goes.

    python bench/study_parallelism.py              # 2 arms × 2 seeds, about 3 minutes on 2 cores
    python bench/study_parallelism.py --seeds 3 --n-train 300
    python bench/study_parallelism.py --packing    # defaults (before) against packing + vision cache (after), inline

Ends with one JSON line: {"bench": "study_parallelism", "ratio": trainings per hour with workers / inline, ...}
(with --packing: {"bench": "study_packing", "ratio": after / before, ...}).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
[run]
name = "parallelism"
seed = 0
seeds = {seeds}
{executor}

[model]
preset = "tiny"
tiny = {{ vision_pretrain_steps = 0 }}

[sources.toy]
type = "toyworld"
n_train = {n_train}
n_bench = 8

[trainer]
type = "llava_sft"
epochs = 2
batch_size = 16
learning_rate = 2e-3
{trainer}

[evaluators.bench]
type = "benchmarks"
toyworld = {{ n_train = {n_train}, n_bench = 8 }}
only = ["SEED_toy"]

[arms.colours]
sources = ["color_clean", "shape_clean"]

[arms.counts]
sources = ["count_clean", "spatial_clean"]
"""


def run(folder: Path, executor: str, seeds: int, n_train: int, trainer: str = "") -> tuple[float, int]:
    """Wall seconds of one `mixlab run`, and the trainings it ran."""
    folder.mkdir(parents=True)
    recipe = folder / "recipe.toml"
    recipe.write_text(RECIPE.format(seeds=list(range(seeds)), executor=executor, n_train=n_train, trainer=trainer))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mixlab.cli", "run", str(recipe), "--no-progress", "--output-dir", str(folder / "run")],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    report = json.loads((folder / "run" / "report.json").read_text())
    trainings = sum(1 for s in report["stages"] if s["name"].startswith("train:") and s["status"] == "done")
    return seconds, trainings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--packing", action="store_true", help="defaults against packing + vision cache, inline")
    args = parser.parse_args()
    if args.packing:  # the trainer's defaults (before) against packing and the vision cache (after), inline
        settings = {"padded": ("", ""), "packed": ("", "packing = true\nvision_cache = true")}
        compare("study_packing", settings, args.seeds, args.n_train)
        return
    cores = os.cpu_count() or 1
    local = f'executor = {{ type = "local", workers = {cores} }}'
    compare("study_parallelism", {"inline": ("", ""), "local": (local, "")}, args.seeds, args.n_train, cores=cores)


def compare(bench: str, settings: dict[str, tuple[str, str]], seeds: int, n_train: int, **extra: int) -> None:
    """Run the study once per setting (label → executor line, trainer lines), the first being the baseline; print
    trainings per hour for each, the ratio of the second to the first, and the JSON line."""
    with tempfile.TemporaryDirectory() as tmp:
        done = {label: run(Path(tmp) / label, ex, seeds, n_train, tr) for label, (ex, tr) in settings.items()}
    per_hour = {label: 3600 * n / seconds for label, (seconds, n) in done.items()}
    for label, (seconds, n) in done.items():
        print(f"{label}: {n} trainings in {seconds:.1f} s: {per_hour[label]:.0f}/h")
    base, other = list(done)
    ratio = per_hour[other] / per_hour[base]
    print(f"{other} / {base} trainings per hour: {ratio:.2f}x")
    summary = {
        "bench": bench,
        "ratio": round(ratio, 3),
        "identical": done[base][1] == done[other][1],
        **{f"{label}_seconds": round(seconds, 1) for label, (seconds, _) in done.items()},
        "trainings": done[base][1],
        **extra,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
