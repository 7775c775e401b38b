"""Executors: Individual Select's candidate trainings in worker processes (local, and submitit's local cluster) give
the same selection, scores and cache as in-process training; worker failures are reported, finished work is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixlab.engine.dispatch import cpu_threads, worker_command
from mixlab.errors import UserError
from mixlab.pipeline import Run
from mixlab.recipe import load_recipe
from mixlab.sections import ExecutorSection
from tests import fakes
from tests.test_individual_select import RECIPE
from tests.test_pipeline import comparable


def run(folder, executor: str = "") -> dict:
    text = RECIPE.format(options="").replace('name = "isel"\n', f'name = "isel"\n{executor}\n', 1)
    recipe = load_recipe(fakes.write_recipe(folder, text))
    return Run(recipe, folder / "run", show_progress=False).execute()


def statuses(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["stages"]}


def test_local_workers_match_inline(fake_recipe, tmp_path):
    inline = run(tmp_path / "inline")
    local = run(tmp_path / "local", 'executor = { type = "local", workers = 2 }')
    assert comparable(local) == comparable(inline)
    assert local["individual_select"] == inline["individual_select"]
    # the workers really trained: each candidate's stage was finished by a worker in this run, with its own log
    stages = statuses(local)
    assert stages["train:isel/color/+color_good"] == stages["train:isel/color/+color_bad"] == "done"
    assert (
        sorted(p.parent.name.split("-")[0] for p in (tmp_path / "local" / "run").rglob("worker.log")) == ["train"] * 5
    )  # baseline and 2 candidates × 2 rounds (each re-baseline is its kept candidate's mixture: reused)
    again = run(tmp_path / "local", 'executor = { type = "local", workers = 2 }')
    assert set(statuses(again).values()) == {"cached"}


def test_parallel_candidates_overlap_in_time(fake_recipe, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "4")  # each training sleeps 4 s in its worker
    run(tmp_path, 'executor = { type = "local", workers = 2 }')
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    color = ("train:isel/color/+color_good", "train:isel/color/+color_bad")
    submitted = [e["time"] for e in events if e["event"] == "submit" and e["stage"] in color]
    ended = [e for e in events if e["event"] == "end" and e["stage"] in color]
    assert len(submitted) == 2 and [e["status"] for e in ended] == ["done", "done"]
    assert all(e["seconds"] >= 4 for e in ended)  # each worker really slept
    # when each training slept (the fake trainer's own clock, so a slow worker start does not count): the two
    # candidates of each round slept at the same time, the baseline alone
    slept = [json.loads(p.read_text()) for p in (tmp_path / "run").rglob("trained.json")]
    spans = sorted((t["start"], t["end"]) for t in slept)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]
    assert len(spans) == 5 and len(overlapping) == 2


def test_submitit_local_cluster_matches_inline(fake_recipe, tmp_path):
    inline = run(tmp_path / "inline")
    remote = run(tmp_path / "sub", 'executor = { type = "submitit", cluster = "local", workers = 2 }')
    assert comparable(remote) == comparable(inline)
    assert (tmp_path / "sub" / "run" / "submitit").is_dir()


def test_worker_failure_names_the_training_and_keeps_finished_work(fake_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "not-a-number")  # the workers' trainer fails on it
    with pytest.raises(RuntimeError, match=r"training isel/baseline failed: could not convert.*worker.log"):
        run(tmp_path, 'executor = { type = "local" }')
    monkeypatch.delenv("FAKE_TRAIN_SLEEP")
    report = run(tmp_path, 'executor = { type = "local" }')
    assert report["individual_select"]["selected_sources"] == ["base", "color_good", "count_good"]
    stages = statuses(report)  # what finished before the failure is reused; the failed training is done now
    sources = [name for name in stages if name.startswith("source:")]
    assert sources and {stages[name] for name in sources} == {"cached"} and stages["model"] == "cached"
    assert stages["train:isel/baseline"] == "done"


def test_executor_options_are_checked(fake_recipe, tmp_path):
    assert ExecutorSection(devices=["0,1", "2,3"]).workers == 2
    assert not ExecutorSection().remote and ExecutorSection(processes=2).remote
    with pytest.raises(UserError, match=r"run.executor.*submitit settings"):
        run(tmp_path, 'executor = { type = "local", cluster = "slurm" }')
    with pytest.raises(UserError, match=r"run.executor.tipe: unknown key. Did you mean 'type'"):
        run(tmp_path, 'executor = { tipe = "local" }')


def test_worker_command_uses_torchrun_for_several_processes(tmp_path):
    assert worker_command(tmp_path / "job.json", 1)[1:] == ["-m", "mixlab.engine.worker", str(tmp_path / "job.json")]
    launch = worker_command(tmp_path / "job.json", 2)
    assert launch[1:3] == ["-m", "torch.distributed.run"] and launch[launch.index("--nproc_per_node") + 1] == "2"


def test_local_processes_share_the_cores():
    """Every process that runs at once gets its share of the cores: workers × processes (torchrun) of them."""
    assert cpu_threads(ExecutorSection(type="local", workers=2), jobs=5, cores=8) == 4
    assert cpu_threads(ExecutorSection(type="local", workers=2), jobs=1, cores=8) == 8  # one job: one worker busy
    assert cpu_threads(ExecutorSection(type="local", processes=2), jobs=3, cores=2) == 1
    assert cpu_threads(ExecutorSection(type="local", workers=2, processes=2), jobs=2, cores=8) == 2
    assert cpu_threads(ExecutorSection(type="local", workers=4), jobs=4, cores=2) == 1  # never below one
    assert cpu_threads(ExecutorSection(type="local", devices=["0", "1"]), jobs=2, cores=8) is None


PARENT = """
import subprocess, sys, time
from mixlab.engine.dispatch import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_local_worker_does_not_outlive_a_killed_mixlab():
    """Killed mixlab (out of memory, kill -9): its workers stop too, instead of training on into stage folders that
    the next run works in."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_sharded_scoring_resumed_with_another_number_of_processes(fake_recipe, tmp_path):
    """Stopped after its shards finished, then run with `processes = 3` instead of 2: the samples are cut anew
    (the two finished shards hold other rows), and the scores come out the same."""
    text = fake_recipe.read_text()
    fake_recipe.write_text(text.replace("seed = 1\n", "seed = 1\nexecutor = { processes = 2 }\n", 1))
    first = Run(load_recipe(fake_recipe), tmp_path / "run", show_progress=False).execute()
    stage = next((tmp_path / "run" / "stages").glob("score_quality-*"))
    assert sorted(p.name for p in stage.glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
    (stage / "DONE").unlink()  # as if stopped before the merge
    fake_recipe.write_text(text.replace("seed = 1\n", "seed = 1\nexecutor = { processes = 3 }\n", 1))
    again = Run(load_recipe(fake_recipe), tmp_path / "run", show_progress=False).execute()
    assert statuses(again)["score:quality"] == "done"
    assert comparable(again) == comparable(first)
