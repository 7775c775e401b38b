"""Decisions under noise on fake plugins: seed replicates, intervals in report.json, Individual Select's rules,
the dev/test split."""

from __future__ import annotations

import pytest

from mixlab.errors import UserError
from mixlab.pipeline import Run
from mixlab.recipe import load_recipe
from tests import fakes

NOISY = fakes.RECIPE.replace('type = "fake_bench"', 'type = "fake_noisy_bench"')


def run(folder, text: str) -> dict:
    return Run(load_recipe(fakes.write_recipe(folder, text)), folder / "run", show_progress=False).execute()


def with_run_keys(text: str, keys: str) -> str:
    return text.replace("seed = 1\n", f"seed = 1\n{keys}\n", 1)


def test_seeds_replicate_every_training_and_report_means_and_intervals(fake_plugins, tmp_path):
    report = run(tmp_path, with_run_keys(NOISY, "seeds = [0, 1, 2]"))
    assert report["seeds"] == [0, 1, 2]
    names = {s["name"] for s in report["stages"]}
    assert {"train:full@seed0", "train:full@seed1", "train:full@seed2", "merge:soup@seed2"} <= names
    full, curated = report["arms"]["full"], report["arms"]["curated"]
    assert sorted(full["per_seed"]) == ["0", "1", "2"]
    scores = [full["per_seed"][s]["score"] for s in ("0", "1", "2")]
    assert len(set(scores)) == 3  # the seeds really differ
    assert full["score"] == pytest.approx(sum(scores) / 3, abs=1e-3)
    lo, hi = full["score_ci"]
    assert lo < full["score"] < hi and full["score_interval"] == "seeds+items"
    compare = curated["compare"]
    assert compare["to"] == "full" and "compare" not in full
    assert compare["delta"] == pytest.approx(curated["score"] - full["score"], abs=1e-6)
    assert compare["ci"][0] > 0  # curated drops every bad sample: clearly better than full
    assert compare["distinguishable"] is True and compare["p_better"] > 0.97
    health = report["benchmarks"]["noisybench"]
    assert health["chance"] == pytest.approx(25.0) and health["at_chance"] == []
    assert health["noise"] > 0 and health["signal"] > 0 and health["mdd"] > 0


def test_adding_a_seed_reuses_the_others(fake_plugins, tmp_path):
    run(tmp_path, with_run_keys(NOISY, "seeds = [0, 1]"))
    again = run(tmp_path, with_run_keys(NOISY, "seeds = [0, 1, 2]"))
    status = {s["name"]: s["status"] for s in again["stages"]}
    assert status["train:full@seed0"] == status["train:full@seed1"] == "cached"
    assert status["train:full@seed2"] == "done"


def test_one_seed_keeps_the_old_stage_names_and_gives_item_intervals(fake_plugins, tmp_path):
    report = run(tmp_path, NOISY)
    assert report["seeds"] == [1]
    assert "train:full" in {s["name"] for s in report["stages"]}
    assert report["arms"]["full"]["score_interval"] == "items"
    assert report["arms"]["curated"]["compare"]["interval"] == "items"
    # its items come in clusters of two, so no McNemar (which takes items as independent); per-item: test_stats
    assert report["arms"]["curated"]["compare"]["benchmarks"]["noisybench"]["mcnemar_p"] is None


ISEL = """\
[run]
name = "isel"
seed = 0
{run_keys}

[model]
path = "base"

[sources.base]
type = "fake_source"
n = 40

[sources.equal]
type = "fake_source"
category = "x"
n = 40

[sources.bad_worse]
type = "fake_source"
quality = "bad"
category = "x"
n = 40

[selectors.isel]
type = "individual_select"
baseline = ["base"]
{options}

[trainer]
type = "fake_trainer"

[evaluators.bench]
type = "fake_noisy_bench"
items = 300
seed_sd = 0.04

[arms.curated]
sources = ["base", "equal", "bad_worse"]
selector = "isel"
"""


def verdicts(folder, seeds: list[int], options: str) -> dict[str, bool]:
    text = ISEL.format(run_keys=f"seeds = {seeds}", options=options)
    report = run(folder, text)
    return {c["source"]: c["kept"] for r in report["individual_select"]["rounds"] for c in r["candidates"]}


def test_individual_select_ci_rule_keeps_an_equal_candidate_where_the_tolerance_rule_flips(fake_plugins, tmp_path):
    seed_sets = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14], [15, 16, 17]]
    tolerance = [
        verdicts(tmp_path / f"t{i}", s, 'rule = "tolerance"\ntolerance = 0.5') for i, s in enumerate(seed_sets)
    ]
    ci = [verdicts(tmp_path / f"c{i}", s, 'rule = "ci"\ntolerance = 0.5') for i, s in enumerate(seed_sets)]
    assert {v["equal"] for v in tolerance} == {True, False}  # the point rule flips with the seeds
    assert all(v["equal"] for v in ci)  # the interval rule keeps the equal candidate every time
    assert not any(v["bad_worse"] for v in ci + tolerance)  # and both reject the clearly worse one


def test_individual_select_reports_intervals(fake_plugins, tmp_path):
    report = run(tmp_path, ISEL.format(run_keys="seeds = [0, 1]", options='rule = "ci"'))
    block = report["individual_select"]
    assert block["rule"] == "ci"
    candidate = block["rounds"][1]["candidates"][0]
    assert set(candidate) >= {"source", "score", "delta", "ci", "p_better", "kept", "model_dirs"}
    assert candidate["ci"][0] <= candidate["delta"] <= candidate["ci"][1]
    assert sorted(candidate["model_dirs"]) == ["0", "1"]


def test_select_on_dev_reports_the_test_part(fake_plugins, tmp_path):
    report = run(tmp_path, with_run_keys(NOISY, 'select_on = "dev"\ndev_fraction = 0.5'))
    assert report["select_on"] == "dev"
    metrics = report["arms"]["full"]["metrics"]["noisybench"]
    assert set(metrics) == {"score", "items"} and 120 < metrics["items"] < 280  # the test part only
    assert report["arms"]["full"]["score"] == pytest.approx(metrics["score"], abs=1e-3)


def test_compare_to_picks_the_reference_arm(fake_plugins, tmp_path):
    report = run(tmp_path, with_run_keys(NOISY, 'compare_to = "curated"'))
    assert "compare" not in report["arms"]["curated"]
    assert report["arms"]["full"]["compare"]["to"] == "curated" and report["arms"]["full"]["compare"]["delta"] < 0


def test_alignment_runs_once_whatever_the_seeds(fake_plugins, tmp_path):
    text = with_run_keys(NOISY, "seeds = [0, 1]").replace(
        'path = "base"', 'path = "base"\n\n[model.align]\nsources = ["good"]'
    )
    report = run(tmp_path, text)
    names = [s["name"] for s in report["stages"]]
    assert names.count("train:align") == 1 and not any(n.startswith("train:align@") for n in names)
    assert {"train:full@seed0", "train:full@seed1"} <= set(names)


def test_report_gives_each_benchmark_interval_and_standard_error(fake_plugins, tmp_path):
    report = run(tmp_path, with_run_keys(NOISY, "seeds = [0, 1]"))
    full, curated = report["arms"]["full"], report["arms"]["curated"]
    lo, hi = full["benchmark_ci"]["noisybench"]
    assert lo < full["metrics"]["noisybench"]["score"] < hi
    assert curated["compare"]["se"] > 0 and curated["compare"]["benchmarks"]["noisybench"]["se"] > 0


def test_weights_naming_no_benchmark_is_a_clear_error(fake_plugins, tmp_path):
    from mixlab.errors import UserError

    with pytest.raises(UserError, match=r"\[run\] weights names \['noisybnch'\].*Did you mean 'noisybench'"):
        run(tmp_path, with_run_keys(NOISY, "weights = { noisybnch = 2.0 }"))


def test_excluding_every_benchmark_is_a_clear_error(fake_plugins, tmp_path):
    from mixlab.errors import UserError

    with pytest.raises(UserError, match=r"leave none of the benchmarks \['noisybench'\] in the average"):
        run(tmp_path, with_run_keys(NOISY, 'exclude = ["noisybench"]'))


def test_weights_and_exclude_change_the_average(fake_plugins, tmp_path):
    text = NOISY.replace(
        'type = "fake_noisy_bench"', 'type = "fake_noisy_bench"\n\n[evaluators.plain]\ntype = "fake_bench"'
    )
    both = run(tmp_path / "both", text)["arms"]["full"]
    only = run(tmp_path / "only", with_run_keys(text, 'exclude = ["fakebench"]'))["arms"]["full"]
    assert only["score"] == pytest.approx(only["metrics"]["noisybench"]["score"], abs=1e-3)
    assert both["score"] == pytest.approx(
        (both["metrics"]["noisybench"]["score"] + both["metrics"]["fakebench"]["score"]) / 2, abs=1e-3
    )
    weighted = run(tmp_path / "weighted", with_run_keys(text, "weights = { noisybench = 3.0 }"))["arms"]["full"]
    noisy, fake = weighted["metrics"]["noisybench"]["score"], weighted["metrics"]["fakebench"]["score"]
    assert noisy != pytest.approx(fake, abs=0.5)  # else the weights could not show
    assert weighted["score"] == pytest.approx((3 * noisy + fake) / 4, abs=1e-3)


def test_individual_select_judges_a_candidate_on_its_own_category_items(fake_plugins, tmp_path):
    """A bad source that costs only the items of its own category (a twentieth of the benchmark): the average cannot
    tell it from the baseline, its own items can; the equal candidate passes both."""
    bench = "x_share = 0.05\nitems = 8000"

    def decide(folder, options):
        text = ISEL.format(run_keys="seeds = [0, 1, 2]", options='rule = "ci"\n' + options)
        report = run(folder, text.replace("items = 300", bench))
        return {c["source"]: c for r in report["individual_select"]["rounds"] for c in r["candidates"]}

    plain = decide(tmp_path / "a", "")
    assert plain["bad_worse"]["kept"] and plain["bad_worse"]["ci"][1] > 0 and "own_items" not in plain["bad_worse"]
    own = decide(tmp_path / "b", 'category_items = { x = ["noisybench/x"] }')
    bad, equal = own["bad_worse"], own["equal"]
    assert not bad["kept"] and bad["own_items"]["ci"][1] < 0 and not bad["own_items"]["passed"]
    assert bad["ci"] == plain["bad_worse"]["ci"]  # the average's verdict is unchanged; the own items add a condition
    assert bad["own_items"]["items"] == 400 and bad["own_items"]["delta"] < 5 * bad["delta"] < 0
    assert equal["kept"] and equal["own_items"]["passed"]
    whole = decide(tmp_path / "c", 'category_items = { x = ["noisybench"] }')  # the whole benchmark: the average
    assert whole["bad_worse"]["own_items"]["delta"] == pytest.approx(whole["bad_worse"]["delta"], abs=1e-3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('category_items = { z = ["noisybench/x"] }', r"no candidate source of arm 'curated' has category 'z'"),
        ('category_items = { x = ["noisybnch/x"] }', r"names benchmark 'noisybnch'.*Did you mean 'noisybench'"),
        ('category_items = { x = ["noisybench/q"] }', r"noisybench has no item category 'q' among the items decisions"),
    ],
)
def test_individual_select_category_items_errors(fake_plugins, tmp_path, options, message):
    text = ISEL.format(run_keys="seeds = [0]", options=options).replace("items = 300", "x_share = 0.1")
    with pytest.raises(UserError, match=message):
        run(tmp_path, text)


def test_individual_select_tolerance_rule_on_own_items(fake_plugins, tmp_path):
    """rule = "tolerance" applies the same tolerance to the own items' point difference."""
    text = ISEL.format(run_keys="seeds = [0]", options='rule = "tolerance"\ncategory_items = { x = ["noisybench/x"] }')
    text = text.replace("items = 300", "x_share = 0.05\nitems = 8000")

    def bad(folder, tolerance):
        report = run(folder, text.replace('rule = "tolerance"', f'rule = "tolerance"\ntolerance = {tolerance}'))
        return next(
            c for r in report["individual_select"]["rounds"] for c in r["candidates"] if c["source"] == "bad_worse"
        )

    strict, loose = bad(tmp_path / "a", 5.0), bad(tmp_path / "b", 40.0)
    assert strict["delta"] > -5 and strict["own_items"]["delta"] < -5 and not strict["kept"]
    assert loose["own_items"]["delta"] > -40 and loose["kept"]


def test_a_benchmark_with_no_items_on_a_part_is_one_clear_error():
    """A one-item benchmark lands wholly on one side of the dev/test split: its score on the other would be NaN,
    silently compared; it is an error unless [run] exclude leaves it out of the average."""
    import numpy as np

    from mixlab.components import Evaluation
    from mixlab.decisions import Decisions
    from mixlab.outcomes import ItemOutcomes
    from mixlab.sections import RunSection

    one = ItemOutcomes(
        rule="mean", items=["0"], clusters=["0"], correct=np.array([True]), chance=np.array([0.5]), strata=[]
    )
    evaluation = Evaluation({"Tiny": {"score": 100.0}}, {"Tiny": one})
    run = RunSection(name="x", select_on="dev")
    assert len(Decisions(run).view(evaluation, "all").outcomes["Tiny"]) == 1
    empty = [part for part in ("dev", "test") if _raises(lambda p=part: Decisions(run).view(evaluation, p))]
    assert len(empty) == 1
    with pytest.raises(UserError, match=r"'Tiny' has no items on the \w+ part.*exclude.*select_on"):
        Decisions(run).view(evaluation, empty[0])
    big = ItemOutcomes(
        rule="mean",
        items=[str(i) for i in range(50)],
        clusters=[str(i) for i in range(50)],
        correct=np.arange(50) % 3 == 0,
        chance=np.full(50, 0.5),
        strata=[],
    )
    both = Evaluation({"Tiny": {"score": 100.0}, "Big": {"score": 34.0}}, {"Tiny": one, "Big": big})
    for left_out in (
        RunSection(name="x", select_on="dev", exclude=["Tiny"]),
        RunSection(name="x", select_on="dev", weights={"Tiny": 0.0}),
    ):
        decisions = Decisions(left_out)
        view = decisions.view(both, empty[0])
        assert "Tiny" not in view.metrics and "Tiny" not in view.outcomes
        assert np.isfinite(decisions.aggregate(view.metrics))
        assert np.isfinite(decisions.estimate([view]).value)
        assert np.isfinite(decisions.compare([view], [view]).delta)


def _raises(call) -> bool:
    try:
        call()
    except UserError:
        return True
    return False
