"""The pipeline, store and report on fake plugins: stage order, caching, resume after a hard kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mixlab.pipeline import Run
from mixlab.recipe import load_recipe
from mixlab.store import load_samples

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(path: Path, out: Path | None = None) -> dict:
    return Run(load_recipe(path), out, show_progress=False).execute()


def comparable(report: dict) -> dict:
    """What must not depend on caching or crashes: arms and their metrics, the soup, stage names."""
    arms = {k: {x: v[x] for x in ("n_samples", "sources", "metrics", "score")} for k, v in report["arms"].items()}
    return {"arms": arms, "soup": report.get("soup"), "stages": sorted(s["name"] for s in report["stages"])}


def test_run_writes_contract_report(fake_recipe):
    report = run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["arms"]["full"]["n_samples"] == 20
    assert on_disk["arms"]["full"]["sources"] == {"good": 10, "bad": 10}
    assert on_disk["arms"]["full"]["score"] == 50.0
    assert on_disk["arms"]["curated"]["sources"] == {"good": 10}  # the selector dropped every bad sample
    assert on_disk["arms"]["curated"]["metrics"]["fakebench"]["acc"] == 100.0
    assert on_disk["arms"]["curated"]["ground_truth"] == {
        "noisy_samples": 0,
        "noisy_fraction": 0.0,
        "removed_noisy": {"precision": 1.0, "recall": 1.0},
        "kept_clean": 1.0,
    }
    assert on_disk["arms"]["full"]["ground_truth"] == {"noisy_samples": 10, "noisy_fraction": 0.5}
    assert on_disk["soup"]["kept"] == ["full", "curated"]
    assert {s["status"] for s in report["stages"]} == {"done"}
    names = [s["name"] for s in report["stages"]]
    assert (
        names.index("source:good")
        < names.index("model")
        < names.index("score:quality")
        < names.index("select:curated")
        < names.index("train:curated")
        < names.index("eval:curated")
        < names.index("merge:soup")
    )
    assert (run_dir / "recipe.toml").read_text() == fake_recipe.read_text()
    assert (run_dir / "report.md").read_text().startswith("# mixlab report")
    assert (run_dir / "arms.png").stat().st_size > 1000
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert {"start", "end"} <= {e["event"] for e in events}


def test_an_evaluator_label_is_not_a_path(fake_recipe):
    """A section label is any TOML key: "a/b" or ".." must name a folder inside the stage, not a path elsewhere."""
    fake_recipe.write_text(fake_recipe.read_text().replace("[evaluators.bench]", '[evaluators."a/../.."]'))
    run_recipe(fake_recipe)
    stages = list((fake_recipe.parent / "runs" / "fake" / "stages").glob("eval-*"))
    assert stages and all((stage / "a_.._..").is_dir() for stage in stages)


def test_second_run_reuses_every_stage(fake_recipe):
    first = run_recipe(fake_recipe)
    second = run_recipe(fake_recipe)
    assert {s["status"] for s in second["stages"]} == {"cached"}
    assert comparable(first) == comparable(second)


def test_changed_section_reruns_only_downstream(fake_recipe):
    run_recipe(fake_recipe)
    fake_recipe.write_text(fake_recipe.read_text().replace("count = 10", "count = 4"))
    report = run_recipe(fake_recipe)
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status["source:good"] == status["train:full"] == status["eval:full"] == "cached"
    assert status["select:curated"] == status["train:curated"] == "done"
    assert report["arms"]["curated"]["n_samples"] == 4


def test_output_dir_override(fake_recipe, tmp_path):
    run_recipe(fake_recipe, tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "report.json").is_file()


def test_stage_without_done_marker_is_recomputed(fake_recipe):
    first = run_recipe(fake_recipe)
    done = Path(first["arms"]["full"]["model_dir"]).parent / "DONE"  # trainings live in stages/train-<key>
    done.unlink()
    report = run_recipe(fake_recipe)
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status["train:full"] == "done" and status["train:curated"] == "cached"


DRIVER = """
import sys
from mixlab import registry
from tests import fakes
registry.register_plugin(fakes)
from mixlab.cli import main
sys.argv = ["mixlab", "run", sys.argv[1], "--output-dir", sys.argv[2], "--no-progress"]
main()
"""


def test_killed_mid_stage_then_rerun_matches_uninterrupted(fake_recipe, tmp_path):
    reference = run_recipe(fake_recipe, tmp_path / "reference")
    out = tmp_path / "crashy"
    env = {**os.environ, "FAKE_TRAIN_SLEEP": "30", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(fake_recipe), str(out)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    events = out / "events.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (events.exists() and '"stage": "train:full"' in events.read_text()):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert '"stage": "train:full"' in events.read_text()
    assert not list(out.glob("stages/train-*/DONE")) and list(out.glob("stages/train-*/partial.txt"))  # train:full
    assert not (out / "report.json").exists()
    resumed = run_recipe(fake_recipe, out)
    status = {s["name"]: s["status"] for s in resumed["stages"]}
    assert status["source:good"] == "cached" and status["train:full"] == "done"
    assert comparable(resumed) == comparable(reference)


def test_failed_stage_keeps_finished_work_and_reports(fake_recipe, monkeypatch):
    from tests import fakes

    def boom(self, model_dir, work_dir, ctx):
        raise RuntimeError("evaluator exploded")

    with monkeypatch.context() as patch:
        patch.setattr(fakes.FakeEvaluator, "evaluate", boom)
        try:
            run_recipe(fake_recipe)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the failure must propagate")
    report = json.loads((fake_recipe.parent / "runs" / "fake" / "report.json").read_text())
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status["train:full"] == "done" and status["eval:full"] == "failed"
    again = run_recipe(fake_recipe)
    assert {s["name"]: s["status"] for s in again["stages"]}["train:full"] == "cached"


def test_failed_rerun_leaves_the_finished_runs_files_alone(fake_recipe, monkeypatch):
    """report.json, the recipe copy and every arm's selection (what `mixlab export` writes) stay the finished run's."""
    run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    kept = ["report.json", "recipe.toml", "selections/curated.parquet", "selections/full.parquet"]
    before = {name: (run_dir / name).read_bytes() for name in kept}
    events = (run_dir / "events.jsonl").read_text()
    fake_recipe.write_text(fake_recipe.read_text().replace("count = 10", "count = 5"))  # a new selection ...
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "not-a-number")  # ... whose training fails
    try:
        run_recipe(fake_recipe)
    except ValueError:
        pass
    else:
        raise AssertionError("the failure must propagate")
    rerun = (run_dir / "events.jsonl").read_text()[len(events) :]
    assert '"event": "start", "stage": "select:curated"' in rerun  # the new selection was made
    assert {name: (run_dir / name).read_bytes() for name in kept} == before
    assert (run_dir / "report-failed.json").is_file()
    monkeypatch.delenv("FAKE_TRAIN_SLEEP")
    run_recipe(fake_recipe)  # a rerun that finishes replaces them
    assert len(load_samples(run_dir / "selections" / "curated.parquet")) == 5


def stopped_fresh_run(fake_recipe, monkeypatch, out: Path) -> None:
    """`--fresh 'train:full*'` over a finished two-seed run, stopped while it trains seed 1 (after seed 0 is
    trained again, before any evaluation of it)."""
    import pytest

    from tests import fakes

    fake_recipe.write_text(fake_recipe.read_text().replace("seed = 1\n", "seed = 1\nseeds = [0, 1]\n", 1))
    run_recipe(fake_recipe, out)
    train = fakes.FakeTrainer.train
    calls = []

    def stop_at_the_second(self, samples, base_model, work_dir, ctx, overrides=None):
        calls.append(ctx.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would stop it: no evaluation after the training
        return train(self, samples, base_model, work_dir, ctx, overrides)

    monkeypatch.setattr(fakes.FakeTrainer, "train", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        Run(load_recipe(fake_recipe), out, show_progress=False, fresh=("train:full*",)).execute()
    monkeypatch.setattr(fakes.FakeTrainer, "train", train)
    assert calls == [0, 1] and (out / "fresh.json").is_file()


def test_a_fresh_run_stopped_midway_is_taken_up_by_the_next_run(fake_recipe, monkeypatch, tmp_path):
    """The next plain run redoes what the --fresh run had still to do: the evaluations of the models it replaced are
    not reused (they would score a model that is no longer on disk), and the training it finished is kept."""
    out = tmp_path / "out"
    stopped_fresh_run(fake_recipe, monkeypatch, out)
    status = {s["name"]: s["status"] for s in run_recipe(fake_recipe, out)["stages"]}
    assert status["train:full@seed0"] == "cached" and status["train:full@seed1"] == "done"
    assert status["eval:full@seed0"] == status["eval:full@seed1"] == "done"
    assert status["train:curated@seed0"] == "cached" and not (out / "fresh.json").exists()
    again = {s["name"]: s["status"] for s in run_recipe(fake_recipe, out)["stages"]}
    assert set(again.values()) == {"cached"}


def test_repeating_the_stopped_fresh_run_keeps_what_it_redid(fake_recipe, monkeypatch, tmp_path):
    out = tmp_path / "out"
    stopped_fresh_run(fake_recipe, monkeypatch, out)
    report = Run(load_recipe(fake_recipe), out, show_progress=False, fresh=("train:full*",)).execute()
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status["train:full@seed0"] == "cached" and status["train:full@seed1"] == "done"
    assert status["eval:full@seed0"] == "done"


def test_one_run_at_a_time_in_a_folder(fake_recipe, tmp_path):
    import pytest

    from mixlab.errors import UserError
    from mixlab.store import Store

    out = tmp_path / "out"
    with Store(out).lock():  # another `mixlab run` holds the folder
        with pytest.raises(UserError, match=r"is in use by another `mixlab run` \(pid \d+, since .*\): wait"):
            run_recipe(fake_recipe, out)
    assert not (out / "report.json").exists()
    run_recipe(fake_recipe, out)  # free again


def test_the_report_is_written_last_and_a_first_run_keeps_its_recipe_from_the_start(fake_recipe, monkeypatch, tmp_path):
    """A run stopped while it writes its files leaves no report.json that disagrees with them, and `compare` says
    how to finish it; a first run stopped early is still a run folder (its recipe copy is written first)."""
    import pytest

    from mixlab import report as report_module
    from mixlab.errors import UserError
    from mixlab.run_folder import read_report, run_arms

    out = tmp_path / "out"
    run_recipe(fake_recipe, out)
    fake_recipe.write_text(fake_recipe.read_text().replace("count = 10", "count = 5"))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "render", stopped)  # stopped after the new selections and recipe copy
    with pytest.raises(KeyboardInterrupt):
        run_recipe(fake_recipe, out)
    assert "count = 5" in (out / "recipe.toml").read_text()
    with pytest.raises(UserError, match=r"holds a run that has not finished .* Finish it with `mixlab run") as info:
        read_report(out)
    assert f"`mixlab run {fake_recipe} --output-dir {out}`" in str(info.value)  # the recipe, not the copy
    monkeypatch.undo()
    assert run_recipe(fake_recipe, out)["arms"]["curated"]["n_samples"] == 5

    first = tmp_path / "first"
    monkeypatch.setattr(Run, "run_stages", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    monkeypatch.setattr(report_module, "render", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(fake_recipe, first)
    assert run_arms(first) == ["full", "curated"]
