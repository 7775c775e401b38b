"""mixlab.stats: headline rules, chance levels, the paired cluster bootstrap with seed noise, health, dev/test."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from mixlab import stats
from mixlab.outcomes import ItemOutcomes


def _table(rule, rows, strata=None, chance=0.5, predicted=None, truth=None):
    """rows: list of (cluster, correct); items are numbered."""
    n = len(rows)
    return ItemOutcomes(
        rule=rule,
        items=[f"i{k}" for k in range(n)],
        clusters=[c for c, _ in rows],
        correct=np.array([bool(x) for _, x in rows]),
        chance=np.full(n, chance),
        strata=list(strata or []),
        predicted=predicted,
        truth=truth,
    )


def _mme():
    # subtask A: image a1 both right, a2 one right -> acc 75, acc+ 50 -> 62.5
    # subtask B: b1 none, b2 both, b3 one -> acc 50, acc+ 33.3 -> 41.67
    rows = [
        ("a1", 1),
        ("a1", 1),
        ("a2", 1),
        ("a2", 0),
        ("b1", 0),
        ("b1", 0),
        ("b2", 1),
        ("b2", 1),
        ("b3", 1),
        ("b3", 0),
    ]
    return _table("mme", rows, strata=["A"] * 4 + ["B"] * 6)


def _circular():
    rows = [
        (q, x) for q, xs in [("q1", [1, 1, 1, 1]), ("q2", [1, 1, 1, 0]), ("q3", [1] * 4), ("q4", [0] * 4)] for x in xs
    ]
    return _table("circular", rows, chance=0.25)


def _mean():
    return _table("mean", [(f"c{k}", x) for k, x in enumerate([1, 1, 1, 0, 1, 1, 0, 1, 0, 1])])


def _f1():
    predicted = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)  # TP 3, FP 1, FN 2, TN 4
    truth = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    rows = [(f"c{k}", p == t) for k, (p, t) in enumerate(zip(predicted, truth, strict=True))]
    return _table("f1", rows, None, 0.5, predicted, truth)


HAND = [(_mme, (62.5 + (50 + 100 / 3) / 2) / 2), (_circular, 50.0), (_mean, 70.0), (_f1, 100 * 6 / 9)]


@pytest.mark.parametrize(("make", "expected"), HAND, ids=["mme", "circular", "mean", "f1"])
def test_headline_hand_tables(make, expected):
    o = make()
    assert stats.headline(o) == pytest.approx(expected)
    ones = np.ones((3, len(stats.cluster_index(o))))
    np.testing.assert_allclose(stats.headline(o, ones), expected)


@pytest.mark.parametrize("make", [m for m, _ in HAND], ids=["mme", "circular", "mean", "f1"])
def test_duplicating_a_cluster_by_weight_equals_duplicated_rows(make):
    o = make()
    idx = stats.cluster_index(o)
    target = 2  # the third cluster
    w = np.ones(len(idx))
    w[target] = 2
    rows = np.flatnonzero(idx.of_item == target)
    order = np.concatenate([np.arange(len(o)), rows])
    dup = ItemOutcomes(
        rule=o.rule,
        items=[f"x{k}" for k in range(len(order))],
        clusters=[o.clusters[i] + ("#copy" if k >= len(o) else "") for k, i in enumerate(order)],
        correct=o.correct[order],
        chance=o.chance[order],
        strata=[o.strata[i] for i in order] if o.strata else [],
        predicted=None if o.predicted is None else o.predicted[order],
        truth=None if o.truth is None else o.truth[order],
    )
    assert stats.headline(o, w[None, :])[0] == pytest.approx(stats.headline(dup))
    assert stats.headline(o, w) == pytest.approx(stats.headline(dup))
    assert stats.headline(dup) != pytest.approx(stats.headline(o))  # the duplication mattered


def test_chance_levels():
    yes_no = _table("mean", [(f"c{k}", 1) for k in range(10)], chance=0.5)
    four = _table("mean", [(f"c{k}", 1) for k in range(10)], chance=0.25)
    mme = _mme()
    circ = _circular()
    assert stats.chance_level(yes_no) == pytest.approx(50.0)
    assert stats.chance_level(four) == pytest.approx(25.0)
    assert stats.chance_level(mme) == pytest.approx(37.5)
    assert stats.chance_level(circ) == pytest.approx(100 * 0.25**4)
    assert stats.chance_level(_f1()) == pytest.approx(100 * 2 * 0.5 / (2 * 0.5 + 1))  # base rate 1/2: F1 = 1/2


def test_cluster_weights_keep_clusters_whole_and_within_strata():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 5, size=60)
    clusters = [f"c{k}" for k, s in enumerate(sizes) for _ in range(s)]
    strata = [f"s{k % 3}" for k, s in enumerate(sizes) for _ in range(s)]
    o = _table("mean", [(c, rng.random() < 0.6) for c in clusters], strata=strata)
    idx = stats.cluster_index(o)
    w = stats.cluster_weights(o, np.random.default_rng(0), 200)
    assert w.shape == (200, 60)
    per_item = w[:, idx.of_item]
    for k in range(60):
        cols = np.flatnonzero(idx.of_item == k)
        assert (per_item[:, cols] == per_item[:, cols[:1]]).all()
    for s in range(3):
        in_s = idx.stratum_of == s
        assert (w[:, in_s].sum(axis=1) == in_s.sum()).all()
    # one draw, materialised as a table of copies, scores the same as the weighted headline
    for rule in ("mean", "circular", "mme"):
        oo = ItemOutcomes(rule, o.items, o.clusters, o.correct, o.chance, o.strata)
        j = 7
        rows = [row for k in range(60) for r in range(w[j, k]) for row in _rows_of(oo, idx, k, r)]
        copy = _table(rule, [(c, x) for c, x, _ in rows], strata=[s for _, _, s in rows])
        assert stats.headline(oo, w[j : j + 1])[0] == pytest.approx(stats.headline(copy))


def _rows_of(o, idx, k, r):
    return [(f"{o.clusters[i]}#{r}", o.correct[i], o.strata[i]) for i in np.flatnonzero(idx.of_item == k)]


def test_bootstrap_matches_closed_form_paired_se():
    rng = np.random.default_rng(42)
    n = 2000
    u = rng.random(n)
    a = u < 0.70
    b = np.where(rng.random(n) < 0.8, u < 0.65, rng.random(n) < 0.65)  # errors correlated with a's
    oa = _table("mean", [(f"c{k}", x) for k, x in enumerate(a)])
    ob = _table("mean", [(f"c{k}", x) for k, x in enumerate(b)])
    c = stats.compare([{"bench": oa}], [{"bench": ob}], n_draws=4000, seed=3)
    d = a.astype(float) - b.astype(float)
    se = math.sqrt(np.var(d, ddof=1) / n) * 100
    assert c.interval == "items"
    assert c.delta == pytest.approx(100 * d.mean())
    half = (c.ci[1] - c.ci[0]) / 2
    assert half == pytest.approx(1.96 * se, rel=0.1)
    assert c.se == pytest.approx(se, rel=0.1)
    assert stats.mdd(c) == pytest.approx((1.959964 + 0.841621) * c.se, rel=1e-4)
    assert c.benchmarks["bench"].mcnemar_p == pytest.approx(stats.mcnemar(oa, ob))


def _simulate(rng, n_seeds=3, n_strata=3, per_stratum=40, delta=0.05, seed_sd=0.03, rho=0.6, stable=0.8, paired=0.7):
    """Clustered items with strata; arm A's per-item success prob is B's + a cluster effect around ``delta``, and each
    seed shifts each arm's probabilities by a normal effect. The true Δ (population, expected) is 100·delta."""
    clusters, strata, q, eff, shared = [], [], [], [], []
    for s in range(n_strata):
        base = rng.uniform(0.35, 0.6)
        for c in range(per_stratum):
            size = int(rng.integers(2, 5))
            qc = np.clip(base + rng.normal(0, 0.15), 0.2, 0.75)
            ec = delta + rng.uniform(-0.1, 0.1)
            clusters += [f"s{s}c{c}"] * size
            strata += [f"s{s}"] * size
            q += [qc] * size
            eff += [ec] * size
            shared += [s * per_stratum + c] * size
    q, eff, shared = np.array(q), np.array(eff), np.array(shared)
    n = len(q)
    a_runs, b_runs = [], []
    clustered_uniform = lambda: np.where(rng.random(n) < rho, rng.random(shared.max() + 1)[shared], rng.random(n))
    u_item = clustered_uniform()  # how hard each item is, the same for every seed
    for _ in range(n_seeds):
        u = np.where(rng.random(n) < stable, u_item, clustered_uniform())
        u_b = np.where(rng.random(n) < paired, u, clustered_uniform())  # B errs where A errs, mostly
        pa = np.clip(q + eff + rng.normal(0, seed_sd), 0, 1)
        pb = np.clip(q + rng.normal(0, seed_sd), 0, 1)
        a_runs.append({"bench": _table("mean", list(zip(clusters, u < pa, strict=True)), strata=strata)})
        b_runs.append({"bench": _table("mean", list(zip(clusters, u_b < pb, strict=True)), strata=strata)})
    return a_runs, b_runs, 100 * delta


def _item_luck_only(rng, n_seeds, n_items=600):
    """Every training gets each item right by its own luck (A with probability 0.60, B 0.55): the seeds share no
    item effect, so all item noise is per-seed luck, already in the spread of the per-seed differences."""
    runs = [[{"bench": _table("mean", [(f"c{k}", x) for k, x in enumerate(rng.random(n_items) < p)])}
             for _ in range(n_seeds)] for p in (0.60, 0.55)]  # fmt: skip
    return runs[0], runs[1], 5.0


@pytest.mark.parametrize(("world", "n_seeds"), [(_simulate, 3), (_simulate, 5), (_item_luck_only, 3)])
def test_coverage_is_nominal_with_clusters_strata_and_seed_noise(world, n_seeds):
    """95 % intervals contain the truth 93-97.5 % of the time (400 simulated studies: ±1.1 points of sampling error):
    not below (too narrow), and not above, which counting each seed's item luck twice, in the seed spread and in the
    item term, gave (97 % here, 99 % with item luck only)."""
    rng = np.random.default_rng(2025)
    reps, covered = 400, 0
    for r in range(reps):
        a_runs, b_runs, truth = world(rng, n_seeds=n_seeds)
        c = stats.compare(a_runs, b_runs, n_draws=800, seed=r)
        assert c.interval == "seeds+items"
        covered += c.ci[0] <= truth <= c.ci[1]
    assert 0.93 <= covered / reps <= 0.975, covered / reps


def test_naive_item_resampling_is_too_narrow_on_clustered_data():
    rng = np.random.default_rng(5)
    a_runs, b_runs, _ = _simulate(rng, n_seeds=1, per_stratum=80, rho=0.95)
    c = stats.compare(a_runs, b_runs, n_draws=2000)
    naive = [
        {"bench": ItemOutcomes("mean", o.items, list(o.items), o.correct, o.chance, o.strata)}
        for o in (a_runs[0]["bench"], b_runs[0]["bench"])
    ]
    n = stats.compare([naive[0]], [naive[1]], n_draws=2000)
    assert n.delta == pytest.approx(c.delta)
    assert (n.ci[1] - n.ci[0]) < 0.8 * (c.ci[1] - c.ci[0])


def test_compare_is_deterministic_and_pairs_benchmarks():
    rng = np.random.default_rng(9)
    a1, b1, _ = _simulate(rng, n_seeds=2, per_stratum=15)
    a2, b2, _ = _simulate(rng, n_seeds=2, per_stratum=15, delta=-0.02)
    a = [{"x": a1[s]["bench"], "y": a2[s]["bench"]} for s in range(2)]
    b = [{"x": b1[s]["bench"], "y": b2[s]["bench"]} for s in range(2)]
    c1 = stats.compare(a, b, n_draws=300, seed=4)
    c2 = stats.compare(a, b, n_draws=300, seed=4)
    assert c1 == c2
    assert stats.compare(a, b, n_draws=300, seed=5).ci != c1.ci
    assert c1.delta == pytest.approx((c1.benchmarks["x"].delta + c1.benchmarks["y"].delta) / 2)
    assert c1.benchmarks["x"].interval == "seeds+items" and c1.mcnemar_p is None
    only_x = stats.compare(a, b, n_draws=300, seed=4, exclude=["y"])
    assert only_x.delta == pytest.approx(c1.benchmarks["x"].delta)
    weighted = stats.compare(a, b, n_draws=300, seed=4, weights={"x": 3, "y": 1})
    assert weighted.delta == pytest.approx(0.75 * c1.benchmarks["x"].delta + 0.25 * c1.benchmarks["y"].delta)
    # a benchmark's own result does not depend on which other benchmarks are present
    assert stats.compare([{"x": e["x"]} for e in a], [{"x": e["x"]} for e in b], n_draws=300, seed=4).ci == (
        c1.benchmarks["x"].ci
    )
    # items given in another order are paired by item name
    shuffled = [{"x": _reversed(e["x"]), "y": e["y"]} for e in b]
    assert stats.compare(a, shuffled, n_draws=300, seed=4).delta == pytest.approx(c1.delta)


def _reversed(o):
    k = np.arange(len(o))[::-1]
    return ItemOutcomes(o.rule, [o.items[i] for i in k], [o.clusters[i] for i in k], o.correct[k], o.chance[k],
                        [o.strata[i] for i in k])  # fmt: skip


def test_mcnemar_hand_example_and_no_discordance():
    # 8 items only A gets right, 2 only B, 10 both, 5 neither
    a = [1] * 8 + [0] * 2 + [1] * 10 + [0] * 5
    b = [0] * 8 + [1] * 2 + [1] * 10 + [0] * 5
    oa = _table("mean", [(f"c{k}", x) for k, x in enumerate(a)])
    ob = _table("mean", [(f"c{k}", x) for k, x in enumerate(b)])
    expected = sps.binomtest(8, 10, 0.5).pvalue
    assert expected == pytest.approx(0.109375)
    assert stats.mcnemar(oa, ob) == pytest.approx(expected)
    c = stats.compare([{"m": oa, "circ": _circular()}], [{"m": ob, "circ": _circular()}], n_draws=200)
    assert c.benchmarks["m"].mcnemar_p == pytest.approx(expected)
    assert c.benchmarks["circ"].mcnemar_p is None
    assert stats.mcnemar(oa, oa) == 1.0


def test_mcnemar_only_where_each_item_is_its_own_cluster():
    """McNemar takes the items as independent: with several items to a cluster it would overstate the evidence."""
    a = [1] * 8 + [0] * 2 + [1] * 10 + [0] * 4
    b = [0] * 8 + [1] * 2 + [1] * 10 + [0] * 4
    oa = _table("mean", [(f"c{k // 4}", x) for k, x in enumerate(a)])  # four items per cluster
    ob = _table("mean", [(f"c{k // 4}", x) for k, x in enumerate(b)])
    assert stats.compare([{"m": oa}], [{"m": ob}], n_draws=200).benchmarks["m"].mcnemar_p is None


def test_a_score_that_is_not_a_number_gets_no_interval_and_stays_out_of_an_average_that_leaves_it_out():
    """A NaN score gave P(better) 0 (no draw above 0) and, even excluded or at weight 0, a NaN average (0 × NaN)."""
    a = [{"x": math.nan, "y": 60.0}, {"x": math.nan, "y": 62.0}, {"x": math.nan, "y": 61.0}]
    b = [{"x": 50.0, "y": 55.0}, {"x": 51.0, "y": 56.0}, {"x": 52.0, "y": 54.0}]
    c = stats.compare(a, b, n_draws=400)
    x = c.benchmarks["x"]
    assert x.ci is None and x.p_better is None and x.se is None and x.interval == "none"
    assert stats.estimate(a, n_draws=400).benchmarks["x"].ci is None
    for left_out in ({"exclude": ["x"]}, {"weights": {"x": 0.0}}):
        c = stats.compare(a, b, n_draws=400, **left_out)
        assert c.delta == pytest.approx(6.0) and c.ci is not None and c.ci[0] > 0 and c.p_better > 0.9
        assert math.isfinite(stats.estimate(a, n_draws=400, **left_out).value)


def test_score_only_inputs():
    a = [{"x": 60.0, "y": 40.0}, {"x": 62.0, "y": 41.0}, {"x": 58.0, "y": 43.0}]
    b = [{"x": 55.0, "y": 40.0}, {"x": 57.0, "y": 40.0}, {"x": 56.0, "y": 42.0}]
    c = stats.compare(a, b, n_draws=40000)
    assert c.interval == "seeds" and c.benchmarks["x"].interval == "seeds"
    d = np.array([5.0, 5.0, 2.0]) + np.array([0.0, 1.0, 1.0])  # per-seed Δ of x plus Δ of y
    d = d / 2
    half = sps.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3)
    assert c.delta == pytest.approx(d.mean())
    assert c.ci[0] == pytest.approx(d.mean() - half, abs=0.03 * half)
    assert c.ci[1] == pytest.approx(d.mean() + half, abs=0.03 * half)
    assert 0.5 < c.p_better <= 1.0
    one = stats.compare(a[:1], b[:1])
    assert one.ci is None and one.interval == "none" and one.p_better is None and one.se is None
    assert math.isnan(stats.mdd(one))
    e = stats.estimate(a[:1])
    assert e.ci is None and e.interval == "none" and e.value == pytest.approx(50.0)
    e3 = stats.estimate(a)
    assert e3.interval == "seeds" and e3.ci[0] < e3.value < e3.ci[1]
    # se (and so mdd) follows the interval, not the t(2) draws' unbounded standard deviation
    assert c.se == pytest.approx((c.ci[1] - c.ci[0]) / (2 * 1.959964), rel=1e-6)
    assert stats.mdd(c) == pytest.approx(2.8016 * c.se, rel=1e-3) and stats.mdd(c) < 3 * (c.ci[1] - c.ci[0])


def test_seeds_to_decide_splits_the_noise_into_seeds_and_items():
    a = [{"x": 60.0, "y": 40.0}, {"x": 62.0, "y": 41.0}, {"x": 58.0, "y": 43.0}]
    b = [{"x": 55.0, "y": 40.0}, {"x": 57.0, "y": 40.0}, {"x": 56.0, "y": 42.0}]
    c = stats.compare(a, b)
    per_seed = (np.array([5.0, 5.0, 2.0]) + np.array([0.0, 1.0, 1.0])) / 2
    assert c.seed_sd == pytest.approx(np.std(per_seed, ddof=1)) and c.item_se is None  # scores only: no item term
    assert stats.compare(a[:1], b[:1]).seeds_to_decide() is None  # one seed: no seed spread to plan from

    def plan(delta: float, seed_sd: float, item_se: float | None = None, floor: float | None = None):
        return stats.Comparison(
            delta, (-1.0, 1.0), 0.5, "seeds+items", n_seeds=3, seed_sd=seed_sd, item_se=item_se, item_floor_se=floor
        )

    # no item term, many seeds: about the normal answer (2.8 s / Δ)² = 31.4, a little more for t's tails
    assert 31 <= plan(2.0, 4.0).seeds_to_decide() <= 36
    assert plan(-2.0, 4.0).seeds_to_decide() == plan(2.0, 4.0).seeds_to_decide()  # the sign is no matter
    assert plan(4.0, 4.0).seeds_to_decide() < plan(2.0, 4.0).seeds_to_decide()
    assert plan(0.5, 4.0).seeds_to_decide() is None  # beyond 64 seeds
    assert plan(0.0, 4.0).seeds_to_decide() is None
    # the item noise the seeds share stays however many seeds: once it alone is too wide for Δ, seeds will not do
    assert plan(5.0, 4.0, 2.5, 2.0).items_limited() and plan(5.0, 4.0, 2.5, 2.0).seeds_to_decide() is None
    shared, own = plan(6.0, 4.0, 2.0, 2.0), plan(6.0, 4.0, 2.0, 0.0)  # the same item term, shared or seed by seed
    assert not shared.items_limited() and own.seeds_to_decide() < shared.seeds_to_decide()
    assert plan(6.0, 4.0).seeds_to_decide() <= own.seeds_to_decide()
    assert not plan(5.0, 4.0, 2.5).items_limited()  # one seed's worth of items cannot be split: no claim
    assert shared.plan() == {"seeds_to_decide": shared.seeds_to_decide(), "items_limited": False}
    decided = stats.Comparison(2.5, (0.3, 4.7), 0.99, "seeds+items", n_seeds=3, seed_sd=1.0, item_floor_se=1.0)
    assert decided.plan() == {"seeds_to_decide": None, "items_limited": False}  # decided: nothing to plan


def test_item_floor_is_what_the_seeds_share():
    """Per-item effects that every seed shares stay in the floor; per-seed item luck does not."""
    rng = np.random.default_rng(5)
    items, seeds = 400, 4
    shared = rng.normal(0, 1, items)  # each item's lasting advantage for A

    def arms(per_seed_sd: float) -> tuple[list[dict], list[dict]]:
        a, b = [], []
        for _ in range(seeds):
            logit = 0.3 + 0.8 * shared + per_seed_sd * rng.normal(0, 1, items)
            right_a = rng.random(items) < 1 / (1 + np.exp(-logit))
            right_b = rng.random(items) < 0.55
            make = lambda right: ItemOutcomes(  # noqa: E731
                rule="mean",
                items=[str(i) for i in range(items)],
                clusters=[str(i) for i in range(items)],
                correct=right,
                chance=np.full(items, 0.25),
            )
            a.append({"x": make(right_a)})
            b.append({"x": make(right_b)})
        return a, b

    c = stats.compare(*arms(0.0), n_draws=2000)
    assert c.item_floor_se is not None and 0 < c.item_floor_se <= c.item_se * 1.05
    luck = stats.compare(*arms(3.0), n_draws=2000)  # the same lasting effects under much per-seed item luck
    assert luck.item_floor_se / luck.item_se < 0.8 * c.item_floor_se / c.item_se
    one = stats.compare(*(arm[:1] for arm in arms(0.0)), n_draws=2000)
    assert one.item_floor_se is None and one.item_se > c.item_se  # one seed: all of its item luck, no split


def test_seeds_to_decide_gives_the_power_it_promises():
    """Simulated: with the planned number of seeds, a true Δ of that size is told apart from 0 about 80 % of the
    time (score-only entries, normal seed noise)."""
    rng = np.random.default_rng(11)
    delta, sd = 3.0, 4.0
    n = stats.Comparison(delta, (-1.0, 1.0), 0.5, "seeds", n_seeds=3, seed_sd=sd).seeds_to_decide()
    assert n is not None and 10 <= n <= 20
    found = 0
    for _ in range(300):
        diffs = rng.normal(delta, sd, n)
        c = stats.compare([{"x": float(d)} for d in diffs], [{"x": 0.0}] * n, n_draws=2000, seed=int(rng.integers(1e9)))
        found += bool(c.distinguishable)
    assert 0.72 <= found / 300 <= 0.88


def test_estimate_with_items():
    rng = np.random.default_rng(3)
    a_runs, _, _ = _simulate(rng, n_seeds=1)
    e = stats.estimate(a_runs, n_draws=1000)
    assert e.interval == "items" and e.benchmarks["bench"].interval == "items"
    assert e.value == pytest.approx(stats.headline(a_runs[0]["bench"]))
    assert e.ci[0] < e.value < e.ci[1]


def test_signal_noise_snr_and_health():
    assert stats.signal([40.0, 50.0, 60.0]) == pytest.approx(20 / 50)
    assert stats.noise([48.0, 50.0, 52.0]) == pytest.approx(np.std([48, 50, 52]) / 50)
    assert stats.snr([40.0, 50.0, 60.0], [48.0, 50.0, 52.0]) == pytest.approx(0.4 / (np.std([48, 50, 52]) / 50))
    h = stats.health({"a": [48.0, 50.0, 52.0], "b": [24.0, 26.0, 25.0], "c": [70.0, 71.0, 72.0]}, chance=25.0, se=1.0)
    noises = [np.std(v) / np.mean(v) for v in ([48, 50, 52], [24, 26, 25], [70, 71, 72])]
    assert h.noise == pytest.approx(np.mean(noises))
    assert h.signal == pytest.approx((71 - 25) / np.mean([50, 25, 71]))
    assert h.snr == pytest.approx(h.signal / h.noise)
    assert h.mdd == pytest.approx(2.80158, rel=1e-4)
    assert h.at_chance == ["b"]
    one_seed = stats.health({"a": [50.0], "b": [24.0]}, chance=25.0)
    assert one_seed.noise is None and one_seed.snr is None and one_seed.mdd is None
    assert one_seed.at_chance == ["b"]  # no interval: at or below chance
    ests = {"a": stats.Estimate(50.0, (20.0, 80.0), "items")}
    assert stats.health({"a": [50.0]}, chance=25.0, estimates=ests).at_chance == ["a"]
    below = {"a": stats.Estimate(25.0, (22.0, 28.0), "items")}  # MME answered all alike: below the guesser's 37.5
    assert stats.health({"a": [25.0]}, chance=37.5, estimates=below).at_chance == ["a"]
    above = {"a": stats.Estimate(60.0, (55.0, 65.0), "items")}
    assert stats.health({"a": [60.0]}, chance=37.5, estimates=above).at_chance == []


def test_dev_test_split():
    clusters = [f"img{k}" for k in range(10_000)]
    dev = stats.dev_test_split("MME", clusters, 0.3)
    assert dev.dtype == bool and abs(dev.mean() - 0.3) < 0.02
    assert (stats.dev_test_split("MME", clusters, 0.3) == dev).all()
    assert not (stats.dev_test_split("POPE", clusters, 0.3) == dev).all()  # the benchmark name is part of the key
    code = "from mixlab.stats import dev_test_split as f; print(''.join('1' if x else '0' for x in f('MME', %r, 0.3)))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code % clusters[:300]], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "".join("1" if x else "0" for x in dev[:300])
    # restrict: disjoint, complete, clusters never split
    o = _table("mme", [(f"img{k // 2}", k % 3 == 0) for k in range(400)], strata=[f"t{k // 2 % 5}" for k in range(400)])
    d, t = stats.restrict(o, "dev", "MME", 0.5), stats.restrict(o, "test", "MME", 0.5)
    assert set(d.items).isdisjoint(t.items) and len(d) + len(t) == len(o)
    assert set(d.clusters).isdisjoint(t.clusters)
    assert 0 < len(d) < len(o)


def test_decision_accuracy():
    assert stats.decision_accuracy([(1.0, 2.0), (-1.0, 3.0), (0.5, 0.1), (-2.0, -1.0)]) == pytest.approx(0.75)
    assert math.isnan(stats.decision_accuracy([]))
