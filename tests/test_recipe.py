"""Recipe validation: every problem at once, located to file:line, with did-you-mean hints; exit 2 from the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mixlab.errors import UserError
from mixlab.locate import key_lines
from mixlab.recipe import RecipeError, load_recipe
from tests import fakes

THREE_MISTAKES = (
    fakes.RECIPE.replace('quality = "bad"', 'qualty = "bad"')
    .replace("count = 10", 'count = "ten"')
    .replace('type = "fake_bench"', 'type = "fake_bnch"')
)


def line_containing(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_three_mistakes_three_located_errors(tmp_path, fake_plugins):
    path = fakes.write_recipe(tmp_path, THREE_MISTAKES)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    lines = info.value.lines_rendered
    assert len(lines) == 3, lines
    text = THREE_MISTAKES
    assert (
        f"recipe.toml:{line_containing(text, 'qualty')}: sources.bad.qualty: unknown key. Did you mean 'quality'?"
        in "\n".join(lines)
    )
    assert any(f":{line_containing(text, 'count = ')}: selectors.best.count: " in x and "integer" in x for x in lines)
    assert any(
        f":{line_containing(text, 'fake_bnch')}: evaluators.bench.type: no evaluator plugin named 'fake_bnch'."
        " Did you mean 'fake_bench'" in x
        for x in lines
    )


def test_cli_validate_exit_2_no_traceback(tmp_path):
    path = fakes.write_recipe(tmp_path, THREE_MISTAKES.replace("fake_", "zz_"))
    proc = subprocess.run([sys.executable, "-m", "mixlab.cli", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "problems in recipe" in proc.stderr
    assert "no source plugin named 'zz_source'" in proc.stderr


def test_cross_references_are_checked(tmp_path, fake_plugins):
    text = fakes.RECIPE.replace(
        'sources = ["good", "bad"]\nselector = "best"', 'sources = ["good", "bda"]\nselector = "bets"'
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(fakes.write_recipe(tmp_path, text))
    rendered = "\n".join(info.value.lines_rendered)
    assert "arms.curated.sources.1: unknown source 'bda'. Did you mean 'bad'?" in rendered
    assert "arms.curated.selector: unknown selector 'bets'. Did you mean 'best'?" in rendered


def test_unknown_section_and_missing_parts(tmp_path, fake_plugins):
    text = "[runn]\nname = 'x'\n[model]\npreset = 'tiny'\npath = 'x'\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(fakes.write_recipe(tmp_path, text))
    rendered = "\n".join(info.value.lines_rendered)
    assert "recipe.toml:1: runn: unknown section. Did you mean 'run'?" in rendered
    assert "missing the [arms] section" in rendered
    assert "give exactly one of" in rendered


def test_toml_syntax_error_is_located(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[run]\nname = \n")
    with pytest.raises(UserError, match=r"line 2"):
        load_recipe(path)


def test_trainer_overrides_validated_against_trainer_options(tmp_path, fake_plugins):
    text = fakes.RECIPE.replace(
        '[arms.full]\nsources = ["good", "bad"]', '[arms.full]\nsources = ["good", "bad"]\ntrainer = {epoch = 3}'
    )
    with pytest.raises(RecipeError, match=r"arms.full.trainer.epoch: unknown key. Did you mean 'epochs'"):
        load_recipe(fakes.write_recipe(tmp_path, text))


def test_key_lines_tracks_tables_arrays_and_dotted_keys():
    text = '[a]\nx = 1\n[[b]]\ny = 2\n[[b]]\ny = 3\n[c."d e"]\nz.w = {q = 1}\ns = """\nk = 9\n"""\n'
    lines = key_lines(text)
    assert lines[("a", "x")] == 2
    assert lines[("b", 1, "y")] == 6
    assert lines[("c", "d e", "z", "w")] == 8
    assert ("c", "d e", "k") not in lines


RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_with_strict_types(path, tmp_path, monkeypatch):
    """Every built-in option as the shipped recipes write it passes the strict types; the toy-world recipes (whose
    files mixlab writes itself) pass the path checks too, the real-checkpoint ones name /models and /data."""
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path, check_paths=not path.name.startswith("llava15_"))
    assert recipe.arms and recipe.evaluators


def test_no_value_changes_type(tmp_path, fake_plugins):
    text = fakes.RECIPE.replace('type = "fake_trainer"', 'type = "fake_trainer"\nsleep = 1')  # int for a float: fine
    load_recipe(fakes.write_recipe(tmp_path, text))
    for old, new, key in (
        ("count = 10", 'count = "10"', "selectors.best.count"),
        ("count = 10", "count = 10.0", "selectors.best.count"),
        ("seed = 1", "seed = true", "run.seed"),
        ("sleep = 1", 'sleep = "1"', "trainer.sleep"),
    ):
        with pytest.raises(RecipeError, match=rf"{key}: must be (an integer|a number), not"):
            load_recipe(fakes.write_recipe(tmp_path, text.replace(old, new)))


def test_plugin_check_problems_are_located(tmp_path, fake_plugins, monkeypatch):
    """A plugin's check() returns (key path, message) pairs; the recipe locates each to file:line."""
    monkeypatch.setattr(fakes.FakeSource, "check", lambda self: [(("quality",), "no such quality: use good")])
    text = fakes.RECIPE
    with pytest.raises(RecipeError) as info:
        load_recipe(fakes.write_recipe(tmp_path, text))
    rendered = "\n".join(info.value.lines_rendered)
    line = line_containing(text, 'quality = "good"')
    assert f"recipe.toml:{line}: sources.good.quality: no such quality: use good" in rendered
    assert "unknown source" not in rendered  # the arms' references to the broken sources stay quiet
    # without path checks, check() still runs: what it finds with an option that names no file is reported...
    with pytest.raises(RecipeError, match="no such quality"):
        load_recipe(fakes.write_recipe(tmp_path, text), check_paths=False)
    # ...and what it finds with one of the plugin's path options is left out
    monkeypatch.setattr(fakes.FakeSource, "path_options", frozenset({"quality"}))
    load_recipe(fakes.write_recipe(tmp_path, text), check_paths=False)
