"""Individual Select through the real pipeline with the fake plugins (a fake model's score = its share of good data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixlab.components import Evaluation
from mixlab.errors import UserError
from mixlab.outcomes import ItemOutcomes
from mixlab.pipeline import Run
from mixlab.plugins.selectors.individual_select import IndividualSelect, IndividualSelectOptions, own_items
from mixlab.recipe import load_recipe
from mixlab.testing import StubContext, build, samples
from tests import fakes

RECIPE = """\
[run]
name = "isel"

[model]
path = "base"

[sources.base]
type = "fake_source"
category = "general"

[sources.color_good]
type = "fake_source"
category = "color"

[sources.color_bad]
type = "fake_source"
quality = "bad"
category = "color"

[sources.count_bad]
type = "fake_source"
quality = "bad"
category = "count"

[sources.count_good]
type = "fake_source"
category = "count"
n = 4

[trainer]
type = "fake_trainer"

[evaluators.bench]
type = "fake_bench"

[selectors.isel]
type = "individual_select"
baseline = ["base"]
{options}

[arms.curated]
sources = ["base", "color_good", "color_bad", "count_bad", "count_good"]
selector = "isel"

[soup]
type = "fake_soup"
candidates = "curated"
"""


def run(folder, options: str = "") -> dict:
    recipe = load_recipe(fakes.write_recipe(folder, RECIPE.format(options=options)))
    return Run(recipe, folder / "run", show_progress=False).execute()


def test_keeps_good_rejects_bad_category_by_category(fake_recipe, tmp_path):
    report = run(tmp_path)
    block = report["individual_select"]
    assert [r["category"] for r in block["rounds"]] == ["baseline", "color", "count"]
    verdicts = {c["source"]: c["kept"] for r in block["rounds"] for c in r["candidates"]}
    assert verdicts == {"color_good": True, "color_bad": False, "count_bad": False, "count_good": True}
    assert block["selected_sources"] == ["base", "color_good", "count_good"]
    bad = next(c for r in block["rounds"] for c in r["candidates"] if c["source"] == "color_bad")
    assert bad["score"] == pytest.approx(50.0) and bad["delta"] == pytest.approx(-50.0)
    assert bad["seeds_to_decide"] is None and bad["items_limited"] is False  # one seed, scores only: no plan
    assert [r["baseline_score"] for r in block["rounds"]] == [100.0, 100.0, 100.0]
    assert report["arms"]["curated"]["sources"] == {"base": 10, "color_good": 10, "count_good": 4}
    # ground truth: every removed sample was noisy, and every noisy sample was removed
    truth = report["arms"]["curated"]["ground_truth"]
    assert truth["removed_noisy"] == {"precision": 1.0, "recall": 1.0} and truth["kept_clean"] == 1.0
    # the soup's ingredients: the arm and each kept candidate's own checkpoint
    assert report["soup"]["ingredients"] == ["curated", "color_good", "count_good"]
    assert (tmp_path / "run" / "individual_select.png").is_file()


def test_trainings_are_shared_and_cached(fake_recipe, tmp_path):
    report = run(tmp_path)
    stages = {s["name"]: s["status"] for s in report["stages"]}
    # the last kept candidate's training is the new baseline's and the arm's: trained once, then reused
    assert stages["train:isel/count/+count_good"] == "done"
    assert stages["train:isel/count/baseline"] == "cached" and stages["train:curated"] == "cached"
    again = run(tmp_path)
    assert {s["status"] for s in again["stages"]} == {"cached"}
    assert again["individual_select"] == report["individual_select"]


@pytest.mark.parametrize("change", ["seeds = [0, 1]", 'select_on = "dev"', "weights = { fakebench = 2.0 }"])
def test_a_change_in_seeds_or_decision_rules_decides_again(fake_recipe, tmp_path, change):
    """The selection and the greedy soup read trainings through the run's seeds and rules: their stages rerun when
    those change, even though every training they would reuse is cached."""
    run(tmp_path)
    text = RECIPE.format(options="").replace('name = "isel"', f'name = "isel"\n{change}')
    report = Run(load_recipe(fakes.write_recipe(tmp_path, text)), tmp_path / "run", show_progress=False).execute()
    stages = {s["name"]: s["status"] for s in report["stages"]}
    assert stages["select:curated"] == "done"
    assert all(status == "done" for name, status in stages.items() if name.startswith("merge:"))
    assert stages.get("train:isel/baseline@seed0", stages.get("train:isel/baseline")) == "cached"  # seed 0's


def test_judging_by_seeded_evaluations_decides_again_on_another_run_seed(fake_recipe, tmp_path, monkeypatch):
    """With an evaluator that draws from the run's seed (uses_seed: lm-eval's few-shot sampling), the evaluations
    Individual Select judges by change with [run] seed, so its decisions are made again."""
    monkeypatch.setattr(fakes.FakeEvaluator, "uses_seed", True)
    for seed in (0, 5):
        text = RECIPE.format(options="").replace('name = "isel"', f'name = "isel"\nseed = {seed}\nseeds = [0]')
        report = Run(load_recipe(fakes.write_recipe(tmp_path, text)), tmp_path / "run", show_progress=False).execute()
    stages = {s["name"]: s["status"] for s in report["stages"]}
    assert stages["select:curated"] == "done" and stages["train:isel/baseline"] == "cached"


def test_a_merge_that_judges_nothing_stays_cached_when_the_rules_change(fake_recipe, tmp_path):
    def run_with(change: str) -> dict[str, str]:
        text = RECIPE.format(options="").replace('name = "isel"', f'name = "isel"\n{change}')
        text = text.replace('type = "fake_soup"', 'type = "fake_soup"\njudges = false')
        report = Run(load_recipe(fakes.write_recipe(tmp_path, text)), tmp_path / "run", show_progress=False).execute()
        return {s["name"]: s["status"] for s in report["stages"]}

    run_with("")
    stages = run_with("weights = { fakebench = 2.0 }")
    assert stages["select:curated"] == "done"  # Individual Select judges: it decides again
    assert [status for name, status in stages.items() if name.startswith("merge:")] == ["cached"]


def test_tolerance_admits_a_small_drop(fake_recipe, tmp_path):
    block = run(tmp_path, "tolerance = 60.0")["individual_select"]
    assert block["selected_sources"] == ["base", "color_good", "color_bad", "count_bad", "count_good"]


def test_category_order_and_errors(fake_recipe, tmp_path):
    block = run(tmp_path, 'categories = ["count", "color"]')["individual_select"]
    assert [r["category"] for r in block["rounds"]] == ["baseline", "count", "color"]
    with pytest.raises(UserError, match="missing \\['color'\\]"):
        run(tmp_path, 'categories = ["count"]')


def test_unknown_baseline_source_is_a_user_error(fake_recipe, tmp_path):
    recipe = RECIPE.format(options="").replace('baseline = ["base"]', 'baseline = ["nope"]')
    with pytest.raises(UserError, match="baseline sources \\['nope'\\]"):
        Run(load_recipe(fakes.write_recipe(tmp_path, recipe)), tmp_path / "run", show_progress=False).execute()


def test_scorer_reference_arm_gets_that_arms_model(fake_recipe, tmp_path):
    """The scorer reads the reference arm's trained model (trained first): `seen` = in its training set."""
    text = fakes.RECIPE.replace('type = "fake_quality"', 'type = "fake_quality"\nreference_arm = "ref"')
    text = text.replace("count = 10", 'column = "seen"\ncount = 10') + '\n[arms.ref]\nsources = ["good"]\n'
    report = Run(load_recipe(fakes.write_recipe(tmp_path, text)), tmp_path / "run", show_progress=False).execute()
    assert list(report["arms"]) == ["ref", "full", "curated"]
    assert report["arms"]["curated"]["sources"] == {"bad": 10}  # the lowest `seen`: samples the reference never saw


def test_reference_arm_must_exist(fake_recipe, tmp_path):
    text = fakes.RECIPE.replace('type = "fake_quality"', 'type = "fake_quality"\nreference_arm = "nope"')
    with pytest.raises(UserError, match="unknown arm 'nope'"):
        load_recipe(fakes.write_recipe(tmp_path, text))


def test_decisions_are_counted_by_known_quality():
    from mixlab.plugins.selectors.individual_select import decisions_by_quality, known_quality

    assert known_quality([{"quality": "noisy"}]) == {"quality": "noisy"} and known_quality([{}]) == {}
    rounds = [
        {"candidates": []},
        {"candidates": [{"quality": "clean", "kept": True}, {"quality": "noisy", "kept": False}]},
        {"candidates": [{"quality": "noisy", "kept": True}, {"kept": True}]},
    ]
    assert decisions_by_quality(rounds) == {
        "clean": {"kept": 1, "candidates": 1},
        "noisy": {"kept": 1, "candidates": 2},
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"color": []}, "'color' is empty: list at least one benchmark"),
        ({"color": ["MME/"]}, '\'MME/\' is not "BENCH" or "BENCH/CATEGORY"'),
        ({"color": ["/color"]}, 'is not "BENCH"'),
        ({"color": ["MME/color", "MME/color"]}, "lists 'MME/color' twice"),
    ],
)
def test_category_items_entries_are_checked(value, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        IndividualSelectOptions(baseline=["base"], category_items=value)


def test_category_items_entries_accepted():
    entries = {"color": ["MME", "SEED/Instance Attributes", "SEED/Instance Identity"]}
    assert IndividualSelectOptions(baseline=["base"], category_items=entries).category_items == entries


def _outcomes(categories: list[str], correct: list[bool]) -> ItemOutcomes:
    n = len(categories)
    return ItemOutcomes(
        "mean", [str(i) for i in range(n)], [str(i) for i in range(n)], correct, [0.5] * n, [], categories
    )


def test_own_items_selects_the_named_items_one_entry_per_benchmark():
    mme = _outcomes(["count", "numerical", "color", "count"], [True, False, True, True])
    evaluation = Evaluation({"MME": {"score": 75.0}, "POPE": {"score": 80.0}, "MMB": {"score": 50.0}}, {"MME": mme})
    own = own_items(evaluation, ["MME/count", "MME/numerical", "POPE"], "isel")
    assert set(own) == {"MME", "POPE"}  # MME's two categories are one entry: the benchmark counts once
    assert own["MME"].items == ["0", "1", "3"] and own["POPE"] == 80.0  # POPE has no per-item outcomes: its score
    with pytest.raises(UserError, match="names categories of POPE, but its results name no item categories"):
        own_items(evaluation, ["POPE/adversarial"], "isel")
    with pytest.raises(UserError, match="MME has no item category 'colour' among the items.*Did you mean 'color'"):
        own_items(evaluation, ["MME/colour"], "isel")
    with pytest.raises(UserError, match="names benchmark 'MMBench', which the evaluators do not give"):
        own_items(evaluation, ["MMBench"], "isel")
    no_score = Evaluation({"MME": {"acc": 70.0}})
    with pytest.raises(UserError, match="gives neither per-item results nor a `score` \\(it gives acc\\)"):
        own_items(no_score, ["MME"], "isel")


def test_category_items_naming_no_candidate_category_stops_before_training():
    """Where `validate` cannot see the categories (they come with the data), the selector checks them itself."""
    ctx = StubContext(train=lambda samples, tag: Path("unused"), evaluate=lambda model, tag: {"b": {"score": 1.0}})
    selector = build(IndividualSelect, baseline=["base"], category_items={"colr": ["b"]})
    data = samples(2, "base", "general") + samples(2, "cand", "color")
    with pytest.raises(UserError, match="names category 'colr', which no candidate source has.*Did you mean 'color'"):
        selector.select(data, {}, ctx)
    assert ctx.trained == []


def test_two_individual_select_arms_each_keep_their_decisions(fake_recipe, tmp_path):
    """The top-level block is the last arm's; the other arm's decisions stay in its own entry."""
    text = RECIPE.format(options="").replace(
        '[soup]\ntype = "fake_soup"\ncandidates = "curated"\n',
        '[arms.color_only]\nsources = ["base", "color_good", "color_bad"]\nselector = "isel"\n',
    )
    report = Run(load_recipe(fakes.write_recipe(tmp_path, text)), tmp_path / "run", show_progress=False).execute()
    first = report["arms"]["curated"]["selection"]["individual_select"]
    assert first["selected_sources"] == ["base", "color_good", "count_good"]
    assert report["individual_select"]["selected_sources"] == ["base", "color_good"]
    assert "individual_select" not in report["arms"]["color_only"].get("selection", {})
