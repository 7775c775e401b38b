"""Every bench script the docs name runs end to end (at a tiny size here) and ends with its JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
TINY = {
    "score_throughput": ["--samples", "24", "--batch-size", "8", "--repeats", "1"],
    "option_scoring": ["--samples", "64", "--questions", "6", "--repeats", "1"],
    "train_throughput": ["--samples", "16", "--batch-size", "8", "--repeats", "1", "--no-cache-runs"],
    "coincide_cluster": ["--n", "3000", "--dim", "32", "--k", "12", "--restarts", "2"],
    "soup_memory": ["--n", "2", "--hidden", "64", "--layers", "1", "--intermediate", "128", "--vocab", "512"],
}
# the benches whose `identical` is an exact check (coincide_cluster's is a quality comparison that a tiny size can miss)
CHECKS_IDENTITY = {"score_throughput", "option_scoring", "train_throughput", "soup_memory"}


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_bench_runs_and_ends_with_its_json_line(name):
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *TINY[name]], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["bench"] == name and isinstance(last["ratio"], float) and last["ratio"] > 0
    assert last["identical"] is True if name in CHECKS_IDENTITY else isinstance(last["identical"], bool)


def test_every_bench_the_docs_time_is_run_here():
    named = {p.stem for p in BENCH.glob("*.py")} - {"study_parallelism"}  # trains a study for minutes: docs only
    assert named == set(TINY)
