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
    if args.packing:
        return packing(args.seeds, args.n_train)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        inline_s, inline_n = run(Path(tmp) / "inline", "", args.seeds, args.n_train)
        local = f'executor = {{ type = "local", workers = {cores} }}'
        local_s, local_n = run(Path(tmp) / "local", local, args.seeds, args.n_train)
    per_hour = {"inline": 3600 * inline_n / inline_s, "local": 3600 * local_n / local_s}
    print(
        f"inline (one process, {cores} threads): {inline_n} trainings in {inline_s:.1f} s: {per_hour['inline']:.0f}/h"
    )
    print(f"local ({cores} workers, 1 thread each): {local_n} trainings in {local_s:.1f} s: {per_hour['local']:.0f}/h")
    ratio = per_hour["local"] / per_hour["inline"]
    print(f"local / inline trainings per hour: {ratio:.2f}x")
    summary = {
        "bench": "study_parallelism",
        "ratio": round(ratio, 3),
        "identical": inline_n == local_n,
        "inline_seconds": round(inline_s, 1),
        "local_seconds": round(local_s, 1),
        "trainings": inline_n,
        "cores": cores,
    }
    print(json.dumps(summary))


def packing(seeds: int, n_train: int) -> None:
    """The study inline with the trainer's defaults (before) and with packing and the vision cache (after)."""
    with tempfile.TemporaryDirectory() as tmp:
        padded_s, padded_n = run(Path(tmp) / "padded", "", seeds, n_train)
        packed_s, packed_n = run(Path(tmp) / "packed", "", seeds, n_train, "packing = true\nvision_cache = true")
    per_hour = {"padded": 3600 * padded_n / padded_s, "packed": 3600 * packed_n / packed_s}
    print(f"before (trainer defaults): {padded_n} trainings in {padded_s:.1f} s: {per_hour['padded']:.0f}/h")
    print(f"after (packing + vision cache): {packed_n} trainings in {packed_s:.1f} s: {per_hour['packed']:.0f}/h")
    ratio = per_hour["packed"] / per_hour["padded"]
    print(f"after / before trainings per hour: {ratio:.2f}x")
    summary = {
        "bench": "study_packing",
        "ratio": round(ratio, 3),
        "identical": padded_n == packed_n,
        "padded_seconds": round(padded_s, 1),
        "packed_seconds": round(packed_s, 1),
        "trainings": padded_n,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
