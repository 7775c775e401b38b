"""Alignment pools through a selector: [model.align]'s `selector`, and an arm's own `align` (the unaligned base model
aligned on the arm's selected pool), with their stages, cache, report block and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixlab.pipeline import Run
from mixlab.recipe import RecipeError, load_recipe
from tests import fakes
from tests.test_commands import invoke

# the fake world: "good" (10 clean samples) and "bad" (10 noisy ones); the fake scorer's `badness` is the noise flag
RECIPE = """\
[run]
name = "align"
seed = 1

[model]
path = "base"

[model.align]
sources = ["good", "bad"]
selector = "clean_quarter"

[sources.good]
type = "fake_source"
quality = "good"

[sources.bad]
type = "fake_source"
quality = "bad"

[scorers.quality]
type = "fake_quality"

[selectors.clean_quarter]
type = "fraction"
scorers = ["quality"]
column = "badness"
keep = "lowest"
fraction = 0.25

[selectors.clean_half]
type = "fraction"
scorers = ["quality"]
column = "badness"
keep = "lowest"
fraction = 0.5

[trainer]
type = "fake_trainer"

[evaluators.bench]
type = "fake_bench"

[arms.shared]
sources = ["good"]

[arms.own]
sources = ["good"]
align = { sources = ["good", "bad"], selector = "clean_half", trainer = { epochs = 2 } }

[arms.own_all]
sources = ["good"]
align = { sources = ["good", "bad"] }
"""


def run(recipe: Path, fresh: tuple[str, ...] = ()) -> dict:
    return Run(load_recipe(recipe), recipe.parent / "run", show_progress=False, fresh=fresh).execute()


def stage_folder(recipe: Path, report: dict, name: str) -> Path:
    key = next(s["key"] for s in report["stages"] if s["name"] == name)
    return next((recipe.parent / "run" / "stages").glob(f"*-{key}"))


def trained(recipe: Path, report: dict, name: str) -> tuple[list[str], Path]:
    """A training stage's model: the ids it trained on and the model it started from."""
    folder = stage_folder(recipe, report, name)
    model = folder / json.loads((folder / "result.json").read_text())["model_dir"]
    return json.loads((model / "ids.json").read_text()), Path((model / "base.txt").read_text())


def statuses(report: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in report["stages"]}


@pytest.fixture
def recipe(tmp_path, fake_plugins):
    return fakes.write_recipe(tmp_path, RECIPE)


def test_model_align_trains_on_exactly_its_selection(recipe):
    report = run(recipe)
    names = list(statuses(report))
    assert names.index("score:align/quality") < names.index("select:align") < names.index("train:align")
    selected = json.loads((stage_folder(recipe, report, "select:align") / "result.json").read_text())["ids"]
    ids, base = trained(recipe, report, "train:align")
    assert ids == sorted(selected) and len(ids) == 5 and all(i.startswith("good/") for i in ids)
    assert base == (recipe.parent / "base").resolve()
    assert report["align_selection"] == {
        "n_pool": 20,
        "n_selected": 5,
        "info": {"kept": 5, "column": "badness", "kept_range": [0.0, 0.0]},
        "noisy_in_pool": 10,
        "noisy_kept": 0,
        "noisy_removed": 1.0,
    }
    select = next(s for s in report["stages"] if s["name"] == "select:align")
    assert select["n_selected"] == 5


def test_an_arm_aligns_the_unaligned_base_on_its_own_selection(recipe):
    report = run(recipe)
    unaligned = (recipe.parent / "base").resolve()
    _, shared_base = trained(recipe, report, "train:shared")
    assert shared_base == stage_folder(recipe, report, "train:align") / "model"  # [model.align]'s model
    own_ids, own_align_base = trained(recipe, report, "train:own/align")
    assert own_align_base == unaligned  # the arm aligns the unaligned base, not [model.align]'s model
    assert len(own_ids) == 10 and all(i.startswith("good/") for i in own_ids)
    _, own_base = trained(recipe, report, "train:own")
    assert own_base == stage_folder(recipe, report, "train:own/align") / "model"
    all_ids, all_base = trained(recipe, report, "train:own_all/align")
    assert len(all_ids) == 20 and all_base == unaligned and "select:own_all/align" not in statuses(report)
    own = report["arms"]["own"]["align_selection"]
    assert (own["n_pool"], own["n_selected"], own["noisy_in_pool"], own["noisy_kept"]) == (20, 10, 10, 0)
    assert own["noisy_removed"] == 1.0 and own["info"]["kept"] == 10
    assert report["arms"]["own_all"]["align_selection"]["noisy_removed"] == 0.0
    assert "align_selection" not in report["arms"]["shared"]
    md = (recipe.parent / "run" / "report.md").read_text()
    table = md.split("## Alignment data")[1].split("##")[0]
    assert "| [model.align] | 20 | 5 | 10 | 0 | 100% |" in table
    assert "| own | 20 | 10 | 10 | 0 | 100% |" in table and "| own_all | 20 | 20 | 10 | 10 | 0% |" in table
    assert "| shared |" not in table


def test_an_arm_alignment_is_trained_once_whatever_the_seeds(recipe):
    recipe.write_text(RECIPE.replace("seed = 1", "seed = 1\nseeds = [1, 2]"))
    names = list(statuses(run(recipe)))
    assert names.count("train:own/align") == 1 and {"train:own@seed1", "train:own@seed2"} <= set(names)


def test_a_rerun_reuses_and_a_changed_align_selector_reruns_only_that_arm(recipe):
    first = statuses(run(recipe))
    assert set(first.values()) == {"done"}
    assert set(statuses(run(recipe)).values()) == {"cached"}
    recipe.write_text(RECIPE.replace("fraction = 0.5", "fraction = 0.4"))
    again = statuses(run(recipe))
    own = {"select:own/align", "train:own/align", "train:own", "eval:own"}
    assert again.keys() == first.keys() and {n for n, s in again.items() if s == "done"} == own
    fresh = statuses(run(recipe, fresh=("select:own/align",)))
    assert {n for n, s in fresh.items() if s == "done"} == own


# ---- validation -----------------------------------------------------------------------------------------------


def problems(recipe: Path, text: str) -> str:
    recipe.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    return str(info.value)


def test_unknown_selectors_and_sources_are_located(recipe):
    text = RECIPE.replace('selector = "clean_quarter"', 'selector = "clean_quartr"').replace(
        'align = { sources = ["good", "bad"], selector = "clean_half"',
        'align = { sources = ["good", "bda"], selector = "clean_hlf"',
    )
    message = problems(recipe, text)
    line = text.splitlines().index('selector = "clean_quartr"') + 1
    assert f"recipe.toml:{line}: model.align.selector: unknown selector 'clean_quartr'" in message
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "clean_hlf" in t)
    assert f"recipe.toml:{line}: arms.own.align.selector: unknown selector 'clean_hlf'" in message
    assert f"recipe.toml:{line}: arms.own.align.sources.1: unknown source 'bda'. Did you mean 'bad'?" in message


def test_a_selector_that_trains_models_cannot_choose_an_alignment_pool(recipe):
    text = RECIPE.replace(
        "[trainer]", '[selectors.isel]\ntype = "individual_select"\nbaseline = ["good"]\n\n[trainer]'
    ).replace('selector = "clean_half"', 'selector = "isel"')
    message = problems(recipe, text)
    assert "arms.own.align.selector: selector 'isel' (type 'individual_select') trains and evaluates models" in message
    assert 'choose a selector that ranks or samples the pool, e.g. type = "fraction"' in message


def test_model_align_scorers_cannot_use_a_reference_arm(recipe):
    message = problems(recipe, RECIPE.replace('type = "fake_quality"', 'type = "fake_quality"\nreference_arm = "own"'))
    assert "model.align.selector: selector 'clean_quarter' uses scorer 'quality', whose reference_arm" in message
    assert "arm 'own' is this scorer's reference model" in message and "its align selector 'clean_half'" in message


def test_the_command_line_exits_2_with_the_located_message(recipe, monkeypatch, capsys):
    recipe.write_text(RECIPE.replace('selector = "clean_quarter"', 'selector = "nope"'))
    code, out = invoke(monkeypatch, capsys, "validate", str(recipe))
    assert code == 2 and "model.align.selector: unknown selector 'nope'" in out and "Traceback" not in out


def test_an_arm_selector_that_trains_models_starts_from_the_arms_aligned_model(recipe):
    text = RECIPE.replace(
        "[trainer]", '[selectors.isel]\ntype = "individual_select"\nbaseline = ["good"]\n\n[trainer]'
    ).replace('[arms.own]\nsources = ["good"]', '[arms.own]\nsources = ["good", "bad"]\nselector = "isel"')
    recipe.write_text(text)
    report = run(recipe)
    names = list(statuses(report))
    assert names.index("train:own/align") < names.index("select:own")
    candidates = [n for n in names if n.startswith("train:isel/")]
    assert candidates and all(
        trained(recipe, report, n)[1] == stage_folder(recipe, report, "train:own/align") / "model" for n in candidates
    )
