"""What reruns a stage: a local plugin's source code, mixlab's own code, --fresh, and a clash of score columns."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

import mixlab
from mixlab import registry
from mixlab.cli import main
from mixlab.engine import keys
from mixlab.errors import UserError
from mixlab.pipeline import Run
from mixlab.recipe import load_recipe
from mixlab.store import Store, load_samples
from tests import fakes

PLUGIN = """
import numpy as np
from mixlab import hookimpl
from mixlab.components import Scorer


class LengthScorer(Scorer):
    name = "local_length"

    def score(self, samples, ctx):
        return {"badness": np.array([{weight} * len(s["id"]) for s in samples], dtype=float)}


@hookimpl
def register_scorers(register):
    register(LengthScorer)
"""


@pytest.fixture
def local_plugin(tmp_path, fake_plugins, monkeypatch):
    """A plugin module that is not an installed distribution: its code identity is a hash of its source."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "local_scorer.py").write_text(PLUGIN.replace("{weight}", "1.0"))
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("local_scorer")
    registry.register_plugin(module)
    yield folder / "local_scorer.py"
    registry.unregister_plugin(module)
    sys.modules.pop("local_scorer", None)


def statuses(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["stages"]}


def run(recipe, fresh: tuple[str, ...] = ()) -> dict:
    return Run(load_recipe(recipe), recipe.parent / "run", show_progress=False, fresh=fresh).execute()


def test_editing_a_local_plugin_reruns_exactly_the_stages_that_use_it(local_plugin, tmp_path):
    recipe = fakes.write_recipe(tmp_path, fakes.RECIPE.replace('type = "fake_quality"', 'type = "local_length"'))
    first = run(recipe)
    assert set(statuses(first).values()) == {"done"}
    assert first["mixlab_code"] == keys.mixlab_code()  # the report names the code identity its keys used
    local_plugin.write_text(PLUGIN.replace("{weight}", "2.0"))  # same selection, different code
    registry.unregister_plugin(sys.modules["local_scorer"])
    registry.register_plugin(importlib.reload(sys.modules["local_scorer"]))
    second = statuses(run(recipe))
    rerun = {name for name, status in second.items() if status == "done"}
    assert rerun == {"score:quality", "select:curated"}  # the scorer's stage and the one reading its scores
    assert second["train:curated"] == "cached"  # the selection came out the same, so its training is reused


def test_a_plugin_packages_helper_module_is_part_of_its_code_identity(tmp_path, monkeypatch):
    """Editing a helper module that a local plugin package imports changes the plugin's code identity (only the
    class's own file counted before, so the stages kept results of the old helper)."""
    package = tmp_path / "src" / "textlen_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "count.py").write_text("def words(text):\n    return len(text.split())\n")
    (package / "plugin.py").write_text("from mixlab.components import Scorer\nfrom textlen_plugin import count\n\n\n"
                                       "class Words(Scorer):\n    name = 'words'\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    words = importlib.import_module("textlen_plugin.plugin").Words
    before = keys.plugin_code(words)
    assert before.startswith("textlen_plugin.plugin@")
    (package / "count.py").write_text("def words(text):\n    return -len(text.split())\n")
    keys._plugin_code.cache_clear()
    keys._package_digest.cache_clear()
    assert keys.plugin_code(words) != before
    for name in ("textlen_plugin", "textlen_plugin.count", "textlen_plugin.plugin"):
        sys.modules.pop(name, None)


def test_fresh_reruns_everything_or_a_stage_and_what_depends_on_it(fake_recipe):
    first = run(fake_recipe)
    everything = statuses(run(fake_recipe, fresh=("*",)))
    assert set(everything.values()) == {"done"} and everything.keys() == statuses(first).keys()
    some = statuses(run(fake_recipe, fresh=("score:*",)))
    assert some["score:quality"] == some["select:curated"] == some["train:curated"] == some["eval:curated"] == "done"
    assert some["source:good"] == some["train:full"] == some["eval:full"] == "cached"


def test_reopening_a_stage_unfinishes_its_finished_parts(tmp_path):
    """A stage run again (--fresh, or made from a stage run again) must not keep the shards its last run finished:
    they were scored by the old model."""
    stage = tmp_path / "score_ppl-abc"
    for folder in (stage, stage / "shard-0", stage / "shard-1"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "DONE").write_text("")
    Store.reopen(stage)
    assert not list(stage.rglob("DONE"))


def test_fresh_on_an_unfinished_stage_unfinishes_its_finished_shards(tmp_path):
    """A scoring stopped after some shards, then asked --fresh: the shards scored before are not kept either."""
    from mixlab.engine.stages import Engine

    engine = Engine(Store(tmp_path), fresh=("score:ppl",))
    _, stage = engine.folder("score:ppl", {"m": 1})
    (stage / "shard-0-of-2").mkdir(parents=True)
    (stage / "shard-0-of-2" / "DONE").write_text("")
    assert not engine.reusable("score:ppl", {"m": 1}, stage)
    assert not list(stage.rglob("DONE"))


def test_a_stage_run_again_sweeps_the_temp_files_a_killed_process_left(tmp_path):
    from mixlab.engine.stages import Engine

    engine = Engine(Store(tmp_path))
    _, stage = engine.folder("train:x", {"m": 1})
    stage.mkdir(parents=True)
    (stage / ".result.json.4242.tmp").write_text("{")
    engine.stage("train:x", {"m": 1}, lambda folder: {"ok": True})
    assert sorted(p.name for p in stage.iterdir()) == ["DONE", "result.json"]


def test_a_cache_line_cut_by_a_crash_costs_only_itself(tmp_path):
    """The next batch starts on a line of its own, so what it saves can be read back."""
    from mixlab.caches import JsonlCache

    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "value": 1.0}\n{"key": "b", "val')
    cache = JsonlCache(path)
    assert cache.items == {"a": 1.0}
    cache.add([("c", 3.0)])
    assert JsonlCache(path).items == {"a": 1.0, "c": 3.0}


def test_fresh_on_the_command_line(fake_recipe, monkeypatch, capsys):
    out = fake_recipe.parent / "cli-run"
    for argv in (["run", str(fake_recipe)], ["run", str(fake_recipe), "--fresh", "train:full,score:quality"]):
        monkeypatch.setattr(sys, "argv", ["mixlab", *argv, "--output-dir", str(out), "--no-progress"])
        main()
    import json

    report = json.loads((out / "report.json").read_text())
    status = statuses(report)
    assert status["train:full"] == status["eval:full"] == status["score:quality"] == "done"
    assert status["source:good"] == status["model"] == "cached"
    assert "warning" not in capsys.readouterr().err  # both patterns named stages
    monkeypatch.setattr(
        sys, "argv", ["mixlab", "run", str(fake_recipe), "--fresh", "score:qualty", "--output-dir", str(out)]
    )
    main()
    err = capsys.readouterr().err
    assert "warning: --fresh score:qualty matched no stage of this run, so it reran nothing" in err
    assert "Did you mean 'score:quality'" in err


def test_a_message_is_printed_as_written(fake_recipe, monkeypatch, capsys):
    """Rich would turn ":cat:" in a message into an emoji."""
    monkeypatch.setattr(sys, "argv", ["mixlab", "run", str(fake_recipe), "--fresh", "selct:cat:", "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "--fresh selct:cat:" in " ".join(capsys.readouterr().err.split())


def test_two_scorers_writing_one_column_is_an_error_naming_both(fake_recipe):
    text = (
        fake_recipe.read_text().replace('scorers = ["quality"]', 'scorers = ["quality", "quality_again"]')
        + '\n[scorers.quality_again]\ntype = "fake_quality"\n'
    )
    fake_recipe.write_text(text)
    with pytest.raises(UserError, match=r"'quality' and 'quality_again' both write a column named 'badness'"):
        run(fake_recipe)


def test_editing_mixlab_itself_changes_every_key_in_a_checkout(tmp_path, monkeypatch):
    """From a source checkout, mixlab's own code (models, training, rules) is in every key, not just its version."""
    package = tmp_path / "mixlab"
    shutil.copytree(Path(mixlab.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(mixlab, "__file__", str(package / "__init__.py"))
    monkeypatch.setattr(keys, "_distribution", lambda top_level: None)  # not an installed release
    keys.mixlab_code.cache_clear()
    try:
        before = (keys.stage_key("model", {"preset": "tiny"}), keys.cache_key({"kind": "ppl"}))
        assert keys.mixlab_code().startswith(f"mixlab-{mixlab.__version__}+")
        keys.mixlab_code.cache_clear()
        assert (keys.stage_key("model", {"preset": "tiny"}), keys.cache_key({"kind": "ppl"})) == before  # stable
        tiny = package / "models" / "tiny.py"
        tiny.write_text(tiny.read_text() + "\n# an edit\n")
        keys.mixlab_code.cache_clear()
        after = (keys.stage_key("model", {"preset": "tiny"}), keys.cache_key({"kind": "ppl"}))
        assert after[0] != before[0] and after[1] != before[1]
    finally:
        keys.mixlab_code.cache_clear()  # the next caller hashes the real package again


def test_a_selection_drawn_from_the_run_seed_is_drawn_again_when_it_changes(fake_recipe):
    """`random` without a seed of its own draws from [run] seed (uses_seed): another run seed draws again, while the
    training replicates, the same seed list, stay cached."""
    text = fake_recipe.read_text().replace("seed = 1\n", "seed = 1\nseeds = [0, 1]\n", 1)
    text += '\n[selectors.half]\ntype = "random"\nfraction = 0.5\n\n[arms.random_half]\nsources = ["good", "bad"]\n'
    text += 'selector = "half"\n'
    fake_recipe.write_text(text)
    store = Store(fake_recipe.parent / "run")

    def drawn() -> list[str]:
        return [s["id"] for s in load_samples(store.selection_file("random_half"))]

    run(fake_recipe)
    before = drawn()
    fake_recipe.write_text(text.replace("seed = 1\n", "seed = 7\n", 1))
    status = statuses(run(fake_recipe))
    assert status["select:random_half"] == "done" and drawn() != before
    assert status["train:full@seed0"] == status["select:curated"] == "cached"


def test_an_edited_evaluator_input_file_evaluates_again(fake_recipe):
    """An evaluator's input files (a benchmark TSV, local task YAMLs) are in the evaluation's key through its
    `fingerprint()`: an edit of the same size evaluates every model again; the trainings stay cached."""
    bonus = fake_recipe.parent / "bonus.txt"
    bonus.write_text("1")
    fake_recipe.write_text(
        fake_recipe.read_text().replace('type = "fake_bench"', 'type = "fake_bench"\nbonus_file = "bonus.txt"')
    )
    first = run(fake_recipe)
    bonus.write_text("3")  # same size, new content
    second = run(fake_recipe)
    status = statuses(second)
    assert {s for name, s in status.items() if name.startswith("eval:")} == {"done"}
    assert status["train:full"] == status["train:curated"] == "cached"
    assert second["arms"]["full"]["score"] == pytest.approx(first["arms"]["full"]["score"] + 2)


def test_benchmark_and_task_files_are_fingerprinted_by_content(tmp_path):
    """The benchmarks evaluator's fingerprint sees an edit that keeps the size and a new file matching its glob; the
    harness adapters' sees their `include_path` folder."""
    from mixlab.evaluation.harness import HarnessEvaluator, HarnessOptions
    from mixlab.plugins.evaluators.benchmarks import Benchmarks

    (tmp_path / "bench").mkdir()
    tsv = tmp_path / "bench" / "A_toy.tsv"
    tsv.write_text("index\tquestion\tanswer\n0\tIs it red?\tYes\n")
    bench = Benchmarks(Benchmarks.Options(paths=["bench/*.tsv"]), "bench", tmp_path)
    before = bench.fingerprint()
    tsv.write_text(tsv.read_text().replace("Yes", "No "))  # same size
    edited = bench.fingerprint()
    (tmp_path / "bench" / "B_toy.tsv").write_text(tsv.read_text())
    assert len({before, edited, bench.fingerprint()}) == 3

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.yaml").write_text("task: t\n")
    harness = HarnessEvaluator(HarnessOptions(tasks=["t"], include_path="tasks"), "h", tmp_path)
    assert HarnessEvaluator(HarnessOptions(tasks=["t"]), "h", tmp_path).fingerprint() == ""
    before = harness.fingerprint()
    (tasks / "t.yaml").write_text("task: u\n")
    assert harness.fingerprint() != before


def test_new_weights_at_the_model_path_train_again(fake_recipe):
    """[model] path is keyed by the checkpoint's content: new weights in the same folder rerun the trainings."""
    run(fake_recipe)
    fakes.write_weights(fake_recipe.parent / "base" / "model.safetensors", 1.0)
    status = statuses(run(fake_recipe))
    assert status["model"] == status["train:full"] == status["eval:full"] == "done"
    assert status["source:good"] == "cached"


def test_a_draw_from_a_reordered_pool_is_drawn_again(fake_recipe):
    """A random draw depends on the pool's order (the arm's `sources` in order): listing them otherwise draws again,
    as a fresh run would, instead of reusing the draw from the old order."""
    text = fake_recipe.read_text()
    text += '\n[selectors.half]\ntype = "random"\nfraction = 0.5\n\n[arms.random_half]\nsources = ["good", "bad"]\n'
    text += 'selector = "half"\n'
    fake_recipe.write_text(text)
    run(fake_recipe)
    fake_recipe.write_text(
        text.replace('sources = ["good", "bad"]\nselector = "half"', 'sources = ["bad", "good"]\nselector = "half"')
    )
    status = statuses(run(fake_recipe))
    assert status["select:random_half"] == "done" and status["select:curated"] == "cached"


def test_an_arms_trainer_overrides_are_fingerprinted_as_the_training_uses_them(fake_recipe, monkeypatch):
    """An arm's `trainer` table can name its own file (a DeepSpeed config): an edit of that file trains the arm
    again, and only that arm."""
    folder = fake_recipe.parent
    for epochs in (1, 2):
        (folder / f"config{epochs}.txt").write_text("v1")
    monkeypatch.setattr(
        fakes.FakeTrainer, "fingerprint", lambda self: (folder / f"config{self.options.epochs}.txt").read_text()
    )
    text = fake_recipe.read_text()
    fake_recipe.write_text(
        text.replace(
            '[arms.full]\nsources = ["good", "bad"]\n',
            '[arms.full]\nsources = ["good", "bad"]\ntrainer = { epochs = 2 }\n',
        )
    )
    run(fake_recipe)
    (folder / "config2.txt").write_text("v2")
    status = statuses(run(fake_recipe))
    assert status["train:full"] == "done" and status["train:curated"] == "cached"


def test_a_scorers_fingerprint_and_seed_are_in_its_key(fake_recipe, monkeypatch):
    """A scorer's fingerprint (its reference checkpoint's content) and, with uses_seed, the run's seed key its stage."""
    text = fake_recipe.read_text().replace("seed = 1\n", "seed = 1\nseeds = [0]\n", 1)
    fake_recipe.write_text(text)
    monkeypatch.setattr(fakes.FakeScorer, "fingerprint", lambda self: "weights v1")
    run(fake_recipe)
    monkeypatch.setattr(fakes.FakeScorer, "fingerprint", lambda self: "weights v2")
    assert statuses(run(fake_recipe))["score:quality"] == "done"
    monkeypatch.setattr(fakes.FakeScorer, "uses_seed", True)
    run(fake_recipe)
    fake_recipe.write_text(text.replace("seed = 1\n", "seed = 2\n", 1))
    status = statuses(run(fake_recipe))
    assert status["score:quality"] == "done" and status["train:full"] == "cached"  # the same replicate seed 0


def test_checkpoints_and_trainer_files_are_keyed_by_content(tmp_path):
    """checkpoint_hash reads every byte (a large weight file changed only in its middle hashes otherwise); a scorer's
    `model` and the trainer's DeepSpeed config are fingerprinted by content."""
    from mixlab.caches import checkpoint_hash
    from mixlab.plugins.scorers.perplexity import PerplexityScorer
    from mixlab.plugins.trainers.llava_sft import LlavaSft

    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "config.json").write_text("{}")
    weights = ref / "model.safetensors"
    weights.write_bytes(bytes(65 << 20))  # over 64 MiB
    scorer = PerplexityScorer(PerplexityScorer.Options(model="ref"), "ppl", tmp_path)
    before, fingerprint = checkpoint_hash(ref), scorer.fingerprint()
    with open(weights, "r+b") as f:
        f.seek(32 << 20)
        f.write(b"\x01")
    assert checkpoint_hash(ref) != before and scorer.fingerprint() != fingerprint
    assert PerplexityScorer(PerplexityScorer.Options(), "ppl", tmp_path).fingerprint() == ""

    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    trainer = LlavaSft(LlavaSft.Options(deepspeed="ds.json"), "trainer", tmp_path)
    before = trainer.fingerprint()
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    assert trainer.fingerprint() != before


def test_a_large_files_digest_is_kept_for_the_next_process_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib
    import time

    from mixlab import caches

    monkeypatch.setenv("MIXLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(caches, "KEPT_DIGEST_BYTES", 1000)
    monkeypatch.setattr(caches, "_now_ns", lambda: time.time_ns() + 3_000_000_000)  # the file has settled
    reads = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, d: reads.append(f.name) or real(f, d))
    weights, small = tmp_path / "model.safetensors", tmp_path / "config.json"
    weights.write_bytes(bytes(4000))
    small.write_text("{}")
    first = caches.file_digest(weights), caches.file_digest(small)
    caches._DIGESTS.clear()  # as in a new process
    assert (caches.file_digest(weights), caches.file_digest(small)) == first
    assert reads == [str(weights), str(small), str(small)]  # the weights were read once, the small file twice
    assert (tmp_path / "cache" / "digests.jsonl").read_text().count("\n") == 1

    weights.write_bytes(bytes(3999) + b"\x01")  # same size, new content: the change time moves
    caches._DIGESTS.clear()
    changed = caches.file_digest(weights)
    assert changed != first[0] and reads[-1] == str(weights)

    monkeypatch.setenv("MIXLAB_CACHE_DIR", str(small))  # a cache folder that cannot be made: digests still come
    caches._DIGESTS.clear()
    assert caches.file_digest(weights) == changed


def test_a_cached_evaluation_reports_its_score_under_the_current_weights(fake_recipe):
    """The score recorded with each eval stage in report.json follows [run] weights even when the stage is cached."""
    text = fake_recipe.read_text() + '\n[evaluators.noisy]\ntype = "fake_noisy_bench"\n'
    fake_recipe.write_text(text)
    first = {s["name"]: s for s in run(fake_recipe)["stages"]}
    fake_recipe.write_text(text.replace("seed = 1\n", "seed = 1\nweights = { noisybench = 0.0 }\n", 1))
    report = run(fake_recipe)
    again = {s["name"]: s for s in report["stages"]}
    assert again["eval:full"]["status"] == "cached"
    assert again["eval:full"]["score"] == report["arms"]["full"]["metrics"]["fakebench"]["score"]
    assert again["eval:full"]["score"] != first["eval:full"]["score"]
