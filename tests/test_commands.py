"""`mixlab export`, `report`, `init` and `env`: success paths, and one clear message with exit 2 on bad input."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mixlab import __version__, cli
from mixlab.pipeline import Run
from mixlab.recipe import load_recipe
from mixlab.records import collect
from mixlab.store import Store, save_samples
from tests import fakes
from tests.test_pipeline import run_recipe


def invoke(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the command line as the `mixlab` script does; (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["mixlab", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_export_writes_the_arms_training_set_as_llava_json(fake_recipe, monkeypatch, capsys):
    report = run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    out = fake_recipe.parent / "curated.json"
    code, text = invoke(monkeypatch, capsys, "export", str(run_dir), "curated", str(out))
    assert code == 0 and "10 samples" in text
    records = json.loads(out.read_text())
    assert len(records) == report["arms"]["curated"]["n_samples"] == 10
    assert {r["source"] for r in records} == set(report["arms"]["curated"]["sources"]) == {"good"}
    # the file reads back through mixlab's own LLaVA JSON source into the same conversations
    samples, skipped = collect(records, out, out.parent, "open", "raise", "again")
    assert not skipped and [s["conversations"] for s in samples] == [r["conversations"] for r in records]


def test_export_errors(fake_recipe, monkeypatch, capsys, tmp_path):
    run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    code, text = invoke(monkeypatch, capsys, "export", str(run_dir), "curatd", str(tmp_path / "x.json"))
    assert code == 2 and "no arm 'curatd'" in text and "Did you mean 'curated'" in text and "Traceback" not in text
    (tmp_path / "empty").mkdir()
    code, text = invoke(monkeypatch, capsys, "export", str(tmp_path / "empty"), "full", str(tmp_path / "x.json"))
    assert code == 2 and "not a mixlab run directory" in text
    (Store(run_dir).selection_file("full")).unlink()
    code, text = invoke(monkeypatch, capsys, "export", str(run_dir), "full", str(tmp_path / "x.json"))
    assert code == 2 and "has not been selected yet" in text


def test_export_image_paths_relative_to_a_root(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.toml").write_text('[arms.a]\nsources = ["s"]\n')
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(images / "1.png")
    turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]
    sample = {"id": "s/1", "source": "s", "category": None, "image": str(images / "1.png"), "conversations": turns}
    save_samples(Store(run_dir).selection_file("a"), [{**sample, "noisy": None}])
    out = tmp_path / "out" / "a.json"
    code, _ = invoke(monkeypatch, capsys, "export", str(run_dir), "a", str(out), "--image-root", str(images))
    assert code == 0 and json.loads(out.read_text())[0]["image"] == "1.png"
    code, _ = invoke(monkeypatch, capsys, "export", str(run_dir), "a", str(out))
    assert json.loads(out.read_text())[0]["image"] == str(images / "1.png")
    (tmp_path / "o").mkdir()
    code, text = invoke(monkeypatch, capsys, "export", str(run_dir), "a", str(out), "--image-root", str(tmp_path / "o"))
    assert code == 2 and "is not under --image-root" in text


def test_report_rerenders_from_report_json(fake_recipe, monkeypatch, capsys, tmp_path):
    run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    (run_dir / "report.md").unlink()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["mixlab", "report", str(run_dir)])
    cli.main()
    printed = capsys.readouterr()
    assert "curated" in (run_dir / "report.md").read_text()
    assert "arms × benchmarks" in printed.out and "arms × benchmarks" not in printed.err  # the tables pipe
    code, text = invoke(monkeypatch, capsys, "report", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere does not exist" in text
    (tmp_path / "empty").mkdir()
    code, text = invoke(monkeypatch, capsys, "report", str(tmp_path / "empty"))
    assert code == 2 and "report.json does not exist" in text


def test_init_writes_a_valid_recipe_and_never_overwrites(tmp_path, monkeypatch, capsys):
    path = tmp_path / "mine.toml"
    code, _ = invoke(monkeypatch, capsys, "init", str(path))
    assert code == 0 and 'name = "mine"' in path.read_text()
    code, text = invoke(monkeypatch, capsys, "validate", str(path))
    assert code == 0 and "ok (1 source section, 2 arms)" in text
    before = path.read_text()
    code, text = invoke(monkeypatch, capsys, "init", str(path))
    assert code == 2 and "already exists" in text and path.read_text() == before


def test_env_reports_versions_and_plugins(monkeypatch, capsys):
    code, text = invoke(monkeypatch, capsys, "env", "--json")
    info = json.loads(text)
    assert code == 0 and info["packages"]["mixlab"] == __version__
    assert info["packages"]["flash-attn"] == "not installed" and info["gpus"] == []  # this CPU machine
    assert {"kind": "trainer", "name": "llava_sft"} in [{k: p[k] for k in ("kind", "name")} for p in info["plugins"]]


def test_plugins_lists_components_and_plugin_commands(monkeypatch, capsys):
    code, text = invoke(monkeypatch, capsys, "plugins", "--json")
    rows = {(r["kind"], r["name"]): r["package"] for r in json.loads(text)}
    assert code == 0 and rows[("trainer", "llava_sft")] == "mixlab"
    assert rows[("command", "toyworld")] == rows[("command", "data")] == "mixlab"  # the built-in plugin's commands
    assert ("command", "run") not in rows  # mixlab's own commands are not a plugin's


@pytest.mark.parametrize("command", ["export", "report", "init", "env", "compare"])
def test_new_commands_are_in_help(monkeypatch, capsys, command):
    code, text = invoke(monkeypatch, capsys, "--help")
    assert code == 0 and f"  {command} " in text


def test_compare_reads_back_the_reports_comparison_and_any_other_pair(fake_plugins, monkeypatch, capsys, tmp_path):
    text = fakes.RECIPE.replace('type = "fake_bench"', 'type = "fake_noisy_bench"')
    text = text.replace("seed = 1\n", 'seed = 1\nseeds = [0, 1, 2]\nselect_on = "dev"\n', 1)
    report = Run(load_recipe(fakes.write_recipe(tmp_path, text)), tmp_path / "run", show_progress=False).execute()
    capsys.readouterr()
    stored = report["arms"]["curated"]["compare"]  # curated − full, as the report computed it (test part)
    assert stored["to"] == "full" and stored["ci"] is not None
    code, out = invoke(monkeypatch, capsys, "compare", str(tmp_path / "run"), "curated", "full", "--json")
    assert code == 0, out
    again = json.loads(out)
    assert again["seeds"] == [0, 1, 2] and again["part"] == "test"
    assert again["average"]["delta"] == pytest.approx(stored["delta"])
    assert again["average"]["ci"] == pytest.approx(stored["ci"]) and again["average"]["verdict"] == "better"
    assert again["average"]["items_limited"] == stored["items_limited"]
    assert again["average"]["seeds_to_decide"] == stored["seeds_to_decide"]
    assert set(again["benchmarks"]) == set(stored["benchmarks"]) == {"noisybench"}
    assert again["benchmarks"]["noisybench"]["p_better"] == pytest.approx(
        stored["benchmarks"]["noisybench"]["p_better"]
    )
    code, out = invoke(monkeypatch, capsys, "compare", str(tmp_path / "run"), "full", "curated")  # the other way
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("full − curated, seeds [0, 1, 2], on the test part")
    assert lines[2].split()[:2] == ["average", f"{-stored['delta']:+.2f}"] and lines[2].split()[-2:] == ["worse", "-"]
    assert lines[1].split()[-3:] == ["seeds", "to", "decide"]  # "-": decided already, nothing to plan
    code, out = invoke(monkeypatch, capsys, "compare", str(tmp_path / "run"), "soup", "full")
    assert code == 0 and out.startswith("soup − full, seeds [0, 1, 2]")


def test_compare_errors(fake_recipe, monkeypatch, capsys, tmp_path):
    run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    code, text = invoke(monkeypatch, capsys, "compare", str(run_dir), "curatd", "full")
    assert code == 2 and "no arm 'curatd'" in text and "Did you mean 'curated'" in text and "Traceback" not in text
    code, text = invoke(monkeypatch, capsys, "compare", str(run_dir), "full", "full")
    assert code == 2 and "A and B are both 'full': name two different arms" in text and "Traceback" not in text
    code, text = invoke(monkeypatch, capsys, "compare", str(tmp_path / "nowhere"), "a", "b")
    assert code == 2 and "does not exist" in text and "Traceback" not in text
    for stage in (run_dir / "stages").glob("eval-*"):
        (stage / "DONE").unlink()
    code, text = invoke(monkeypatch, capsys, "compare", str(run_dir), "curated", "full")
    assert code == 2 and "no finished evaluation of 'curated'" in text and "Traceback" not in text


def _edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("break_it", "expect"),
    [
        (lambda d: _edit_json(d / "report.json", lambda r: r.update(seeds=5)), "`seeds` is not a list of integers"),
        (lambda d: _edit_json(d / "report.json", lambda r: r.update(seeds=["a"])), "`seeds` is not a list of integers"),
        (lambda d: _edit_json(d / "report.json", lambda r: r.update(stages=3)), "`stages` is not a list"),
        (lambda d: [(s / "result.json").write_text('{"metr') for s in d.glob("stages/eval-*")], "cannot be read"),
        (lambda d: [(s / "result.json").write_text("{}") for s in d.glob("stages/eval-*")], "cannot be read"),
        (lambda d: [(s / "outcomes.json").write_text("[1") for s in d.glob("stages/eval-*")], "cannot be read"),
    ],
    ids=["seeds-int", "seeds-str", "stages-int", "result-cut", "result-empty", "outcomes-cut"],
)
def test_compare_on_a_damaged_run_folder(break_it, expect, fake_recipe, monkeypatch, capsys):
    """A run folder edited or cut short: one message naming the file and how to redo it, exit 2, no traceback."""
    run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    break_it(run_dir)
    code, text = invoke(monkeypatch, capsys, "compare", str(run_dir), "curated", "full")
    assert code == 2 and expect in text and "Traceback" not in text, text
    assert "Rerun `mixlab run" in text, text


def test_compare_on_a_run_whose_recipe_copy_has_a_broken_run_section(fake_recipe, monkeypatch, capsys):
    run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    capsys.readouterr()  # the run's own report
    arms = '[arms.full]\nsources = ["good"]\n'
    for run, expect in (
        ('run = "fake"\n', "its [run] section is not valid (it is not a table)"),
        ('[run]\nselect_on = "bogus"\n', "its [run] section is not valid (run.select_on: Input should be 'all' or"),
        ("[run]\nweights = { nobench = 2.0 }\n", "[run] weights names ['nobench'], but the evaluators give"),
    ):
        (run_dir / "recipe.toml").write_text(run + arms)
        code, text = invoke(monkeypatch, capsys, "compare", str(run_dir), "curated", "full")
        assert code == 2 and expect in text and "Traceback" not in text, text
        assert len(text.strip().splitlines()) == 1 and "http" not in text, text  # one message, no pydantic dump


def test_compare_by_category(tmp_path, monkeypatch, capsys):
    """Each benchmark category alone, with its interval: the colour questions the noisy arm lost, the count ones
    it kept; the outcomes (categories included) survive their JSON file."""
    from mixlab.outcomes import read_outcomes
    from tests.test_scripts import CATEGORIES, write_run

    write_run(tmp_path)
    stored = read_outcomes(next(tmp_path.glob("stages/eval-*/outcomes.json")))["MMBench_toy"]
    assert stored.categories == [CATEGORIES[0]] * 40 + [CATEGORIES[1]] * 40
    code, text = invoke(monkeypatch, capsys, "compare", str(tmp_path), "baseline", "color_noisy", "--json")
    assert code == 0 and "categories" not in json.loads(text)
    code, text = invoke(
        monkeypatch, capsys, "compare", str(tmp_path), "baseline", "color_noisy", "--by-category", "--json"
    )
    out = json.loads(text)
    colour, count = (out["categories"][f"MMBench_toy/{c}"] for c in CATEGORIES)
    assert colour["delta"] > 40 and colour["ci"][0] > 0 and colour["verdict"] == "better"  # 90 % against 40 % right
    assert abs(count["delta"]) < 15 and count["verdict"] == "not distinguishable"  # the same 70 % in both arms
    assert (colour["delta"] + count["delta"]) / 2 == pytest.approx(out["average"]["delta"], abs=0.01)
    code, text = invoke(monkeypatch, capsys, "compare", str(tmp_path), "baseline", "color_noisy", "--by-category")
    assert code == 0 and "MMBench_toy/attribute_recognition" in text and "by chance" in text


def test_compare_by_category_without_categories(fake_recipe, monkeypatch, capsys):
    run_recipe(fake_recipe)
    run_dir = fake_recipe.parent / "runs" / "fake"
    code, text = invoke(monkeypatch, capsys, "compare", str(run_dir), "curated", "full", "--by-category")
    assert code == 2 and "name no item categories" in text and "drop --by-category" in text and "Traceback" not in text


def test_compare_by_category_needs_categories_on_both_sides(tmp_path, monkeypatch, capsys):
    from mixlab.outcomes import read_outcomes, write_outcomes
    from tests.test_scripts import write_run

    write_run(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    key = next(s["key"] for s in report["stages"] if s["name"] == "eval:color_noisy@seed1")
    path = Store(tmp_path).stage_dir("eval", key) / "outcomes.json"
    stored = read_outcomes(path)
    stored["MMBench_toy"] = replace(stored["MMBench_toy"], categories=[])  # as evaluated without categories
    write_outcomes(path, stored)
    code, text = invoke(monkeypatch, capsys, "compare", str(tmp_path), "baseline", "color_noisy", "--by-category")
    assert code == 2 and "MMBench_toy: the two arms' evaluations do not all name item categories" in text
    assert "Traceback" not in text


def test_items_without_a_category_get_no_row():
    from mixlab.components import Evaluation
    from mixlab.decisions import Decisions
    from mixlab.outcomes import ItemOutcomes
    from mixlab.sections import RunSection

    def evaluation(right: list[bool]) -> Evaluation:
        items = [str(i) for i in range(6)]
        outcomes = ItemOutcomes("mean", items, items, np.array(right), np.full(6, 0.5), categories=["a"] * 3 + [""] * 3)
        return Evaluation({"B": {"score": 100 * sum(right) / 6}}, {"B": outcomes})

    a, b = evaluation([True] * 6), evaluation([False] * 6)
    assert list(Decisions(RunSection(name="x")).compare_categories([a], [b])) == ["B/a"]


def test_a_plugin_that_fails_to_import_leaves_help_version_env_and_the_builtin_commands(monkeypatch, capsys):
    """Every command failed while an installed plugin package could not be imported, even --help and env (the
    command for bug reports); now those and the built-in commands work, and what needs the plugins says why not."""
    from importlib.metadata import EntryPoint

    from mixlab import registry

    broken = EntryPoint(name="broken", value="no_such_module_for_mixlab_tests", group="mixlab")
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [broken] if group == "mixlab" else [])
    monkeypatch.setattr(registry, "_registry", None)
    for args in (["--version"], ["--help"], ["toyworld", "--help"]):
        code, text = invoke(monkeypatch, capsys, *args)
        assert code == 0, (args, text)
    code, text = invoke(monkeypatch, capsys, "env", "--json")
    assert code == 0 and "failed to import" in json.loads(text)["plugin_error"]
    code, text = invoke(monkeypatch, capsys, "plugins")
    assert code == 2 and "plugin package 'broken'" in text and "failed to import" in text
