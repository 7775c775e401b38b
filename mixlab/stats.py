"""Uncertainty for data decisions: benchmark headlines from items, paired cluster bootstrap with seed noise, health.

Everything here is numpy + scipy.stats. The method is described for users in docs/decisions.md:

- ``headline`` recomputes a benchmark's 0-100 score from its items by the benchmark's own rule (mean, circular, MME,
  F1), vectorised over bootstrap draws given as cluster multiplicities (``cluster_weights``);
- ``estimate`` (one arm) and ``compare`` (arm A − arm B) combine item noise (stratified cluster bootstrap, the same
  draws for both arms and every seed) with seed noise (the spread of the per-seed values, scaled by a Student t);
- ``mdd``, ``signal``, ``noise``, ``snr`` and ``health`` say how much a benchmark can tell arms apart
  (Heineman et al. 2025); ``dev_test_split`` / ``restrict`` keep the items used to select apart from those reported.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

import numpy as np
from scipy import stats as _sps

from mixlab.outcomes import ItemOutcomes

IntervalKind = Literal["seeds+items", "items", "seeds", "none"]
SeedEntry = Mapping[str, ItemOutcomes | float]
"""One training seed's results for one arm: benchmark → per-item outcomes, or → headline score where it has none."""

__all__ = [
    "ClusterIndex",
    "Comparison",
    "Estimate",
    "Health",
    "IntervalKind",
    "chance_level",
    "cluster_index",
    "cluster_weights",
    "compare",
    "decision_accuracy",
    "dev_test_split",
    "estimate",
    "headline",
    "health",
    "mcnemar",
    "mdd",
    "noise",
    "restrict",
    "signal",
    "snr",
]


# --------------------------------------------------------------------------------------------------------------------
# clusters and headline scores


@dataclass(frozen=True)
class ClusterIndex:
    """The clusters of one ``ItemOutcomes``, in order of first appearance; a cluster lives in one stratum.

    A cluster is keyed by (stratum, cluster name), so equal names in two strata are two clusters.
    """

    names: list[str]  # per cluster: its name
    strata: list[str]  # per cluster: its stratum ("" when the outcomes have no strata)
    of_item: np.ndarray  # per item: the position of its cluster
    stratum_of: np.ndarray  # per cluster: the position of its stratum in ``stratum_names``
    stratum_names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def cluster_index(o: ItemOutcomes) -> ClusterIndex:
    """The cluster order that ``headline``'s and ``cluster_weights``' columns follow."""
    strata = o.strata if o.strata else [""] * len(o)
    keys: dict[tuple[str, str], int] = {}
    names: list[str] = []
    cstrata: list[str] = []
    of_item = np.empty(len(o), dtype=np.intp)
    for i, key in enumerate(zip(strata, o.clusters, strict=True)):
        k = keys.get(key)
        if k is None:
            k = keys[key] = len(names)
            cstrata.append(key[0])
            names.append(key[1])
        of_item[i] = k
    stratum_names = list(dict.fromkeys(cstrata))
    pos = {s: i for i, s in enumerate(stratum_names)}
    stratum_of = np.array([pos[s] for s in cstrata], dtype=np.intp)
    return ClusterIndex(names, cstrata, of_item, stratum_of, stratum_names)


def _cluster_sums(o: ItemOutcomes, idx: ClusterIndex) -> np.ndarray:
    """Per-cluster sums (n_clusters, m) such that the headline is a function of ``weights @ sums``."""
    c = len(idx)
    count = lambda x: np.bincount(idx.of_item, weights=np.asarray(x, dtype=float), minlength=c)
    n = np.bincount(idx.of_item, minlength=c).astype(float)
    if o.rule == "f1":
        p, t = o.predicted, o.truth
        assert p is not None and t is not None  # ItemOutcomes requires both for rule "f1"
        return np.column_stack([count(p & t), count(p & ~t), count(~p & t)])
    right = count(o.correct)
    all_right = (right == n).astype(float)
    if o.rule == "mean":
        return np.column_stack([right, n])
    if o.rule == "circular":
        return np.column_stack([all_right, np.ones(c)])
    member = np.zeros((c, len(idx.stratum_names)))  # mme
    member[np.arange(c), idx.stratum_of] = 1.0
    return np.hstack([right[:, None] * member, n[:, None] * member, all_right[:, None] * member, member])


def _ratio(num: np.ndarray, den: np.ndarray, undefined: float = math.nan) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, undefined, dtype=float)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _finish(rule: str, t: np.ndarray) -> np.ndarray:
    """Headline scores (B,) from weighted cluster sums ``t`` (B, m)."""
    if rule in ("mean", "circular"):
        return 100.0 * _ratio(t[:, 0], t[:, 1])
    if rule == "f1":
        tp, fp, fn = t[:, 0], t[:, 1], t[:, 2]
        return 100.0 * _ratio(2 * tp, 2 * tp + fp + fn, undefined=0.0)
    s = t.shape[1] // 4  # mme
    acc = _ratio(t[:, :s], t[:, s : 2 * s])
    acc_plus = _ratio(t[:, 2 * s : 3 * s], t[:, 3 * s :])
    return 100.0 * ((acc + acc_plus) / 2).mean(axis=1)


def headline(o: ItemOutcomes, weights: np.ndarray | None = None) -> np.ndarray | float:
    """The benchmark's 0-100 headline score from its items, by ``o.rule``.

    ``weights``: cluster multiplicities (B, n_clusters), columns in ``cluster_index(o)`` order (a bootstrap draw per
    row); gives the B scores (a single 1-D row gives one float). None: the plain score (a float).
    """
    idx = cluster_index(o)
    sums = _cluster_sums(o, idx)
    if weights is None:
        return float(_finish(o.rule, sums.sum(axis=0, keepdims=True))[0])
    w = np.asarray(weights, dtype=float)
    if w.shape[-1] != len(idx):
        raise ValueError(f"weights have {w.shape[-1]} columns for {len(idx)} clusters")
    if w.ndim == 1:
        return float(_finish(o.rule, w[None, :] @ sums)[0])
    return _finish(o.rule, w @ sums)


def chance_level(o: ItemOutcomes) -> float:
    """The expected headline of a uniform random guesser (item i right with probability ``o.chance[i]``).

    f1: the F1 of a guesser saying "yes" with probability 1/2, from the expected counts (2p / (2p + 1), p the share
    of "yes" answers).
    """
    if o.rule == "f1":
        assert o.truth is not None  # ItemOutcomes requires it for rule "f1"
        p = float(np.mean(o.truth)) if len(o) else 0.0
        return 100.0 * 2 * p / (2 * p + 1)
    chance = np.asarray(o.chance, dtype=float)
    if o.rule == "mean":
        return 100.0 * float(np.mean(chance))
    idx = cluster_index(o)
    with np.errstate(divide="ignore"):
        all_right = np.exp(np.bincount(idx.of_item, weights=np.log(chance), minlength=len(idx)))
    if o.rule == "circular":
        return 100.0 * float(np.mean(all_right))
    item_stratum = idx.stratum_of[idx.of_item]  # mme
    parts = []
    for s in range(len(idx.stratum_names)):
        acc = np.mean(chance[item_stratum == s])
        acc_plus = np.mean(all_right[idx.stratum_of == s])
        parts.append(100.0 * (acc + acc_plus) / 2)
    return float(np.mean(parts))


def _stratum_weights(idx: ClusterIndex, rng: np.random.Generator, n_draws: int) -> np.ndarray:
    w = np.zeros((n_draws, len(idx)), dtype=np.int64)
    for s in range(len(idx.stratum_names)):
        cols = np.flatnonzero(idx.stratum_of == s)
        k = len(cols)
        w[:, cols] = rng.multinomial(k, np.full(k, 1.0 / k), size=n_draws)
    return w


def cluster_weights(o: ItemOutcomes, rng: np.random.Generator, n_draws: int) -> np.ndarray:
    """Stratified cluster bootstrap: (n_draws, n_clusters) multiplicities, ``cluster_index(o)`` order.

    Within each stratum (all items one stratum when ``o.strata`` is empty) its clusters are drawn with replacement,
    as many as it has; a cluster's items always come together.
    """
    return _stratum_weights(cluster_index(o), rng, n_draws)


# --------------------------------------------------------------------------------------------------------------------
# typed results


@dataclass(frozen=True)
class Estimate:
    """One arm's score (the mean over seeds) with its interval; ``benchmarks``: the same per benchmark."""

    value: float
    ci: tuple[float, float] | None
    interval: IntervalKind
    se: float | None = None  # the interval's width / (2 × 1.96)
    n_seeds: int = 1
    benchmarks: dict[str, Estimate] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci": None if self.ci is None else list(self.ci),
            "interval": self.interval,
            "se": self.se,
            "n_seeds": self.n_seeds,
            "benchmarks": {k: v.to_json() for k, v in self.benchmarks.items()},
        }


@dataclass(frozen=True)
class Comparison:
    """Arm A − arm B (score points): the difference of the seed means, its interval, P(A better).

    ``mcnemar_p`` (one seed, mean-rule benchmarks only): the exact McNemar test on discordant items; it covers item
    noise only, never seed noise. ``se``: the draws' normal-equivalent spread (``_spread``; for ``mdd``). Its
    sources, for planning (``seeds_to_decide``): ``seed_sd``, the std of the per-seed differences; ``item_se``, the
    spread of the item term alone; ``item_floor_se``, the part of it the seeds share, which more seeds leave as it
    is (the rest shrinks as 1/√n). The last needs two seeds or more, like ``seed_sd``.
    """

    delta: float
    ci: tuple[float, float] | None
    p_better: float | None
    interval: IntervalKind
    mcnemar_p: float | None = None
    se: float | None = None
    n_seeds: int = 1
    benchmarks: dict[str, Comparison] = field(default_factory=dict)
    seed_sd: float | None = None
    item_se: float | None = None
    item_floor_se: float | None = None

    @property
    def distinguishable(self) -> bool | None:
        """Whether the interval excludes 0 (None without an interval, or with an undefined one: a benchmark with no
        items in the part compared)."""
        if self.ci is None or not all(math.isfinite(x) for x in self.ci):
            return None
        return not (self.ci[0] <= 0.0 <= self.ci[1])

    def items_limited(self, power: float = 0.8, level: float = 0.95) -> bool:
        """Whether the item noise that more seeds leave alone is too wide for Δ: no number of seeds would detect a
        difference this small on these items, more items would."""
        floor = self.item_floor_se
        return floor is not None and self.delta != 0 and mdd(floor, power, level) >= abs(self.delta)

    def plan(self) -> dict[str, Any]:
        """What would decide a comparison that is not distinguishable (``seeds_to_decide``, ``items_limited``);
        None and False for one that is, or has no interval."""
        if self.distinguishable is not False:
            return {"seeds_to_decide": None, "items_limited": False}
        return {"seeds_to_decide": self.seeds_to_decide(), "items_limited": self.items_limited()}

    def seeds_to_decide(self, power: float = 0.8, level: float = 0.95, max_seeds: int = 64) -> int | None:
        """The fewest seeds at which a true difference of this Δ would be told from 0 with probability ``power`` on
        the same items (docs/decisions.md): a plan that takes the observed Δ and spreads as the truth. None: one
        seed, Δ = 0, ``items_limited``, or beyond ``max_seeds``."""
        if self.seed_sd is None or self.delta == 0 or self.items_limited(power, level):
            return None
        z = float(_sps.norm.ppf(1 - (1 - level) / 2))
        floor = self.item_floor_se or 0.0
        for n in range(2, max_seeds + 1):  # the seed spread holds each seed's item luck: it shrinks with it, as 1/√n
            seeds = self.seed_sd / math.sqrt(n) * float(_sps.t.ppf(1 - (1 - level) / 2, n - 1)) / z
            if mdd(math.sqrt(floor**2 + seeds**2), power, level) <= abs(self.delta):
                return n
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "ci": None if self.ci is None else list(self.ci),
            "p_better": self.p_better,
            "interval": self.interval,
            "mcnemar_p": self.mcnemar_p,
            "se": self.se,
            "n_seeds": self.n_seeds,
            "seed_sd": self.seed_sd,
            "item_se": self.item_se,
            "item_floor_se": self.item_floor_se,
            **self.plan(),
            "benchmarks": {k: v.to_json() for k, v in self.benchmarks.items()},
        }


@dataclass(frozen=True)
class Health:
    """How well one benchmark separates the arms (Heineman et al. 2025), in the benchmark's 0-100 points.

    noise / signal / snr are relative (dimensionless); None where undefined (one seed, fewer than two arms).
    """

    chance: float
    noise: float | None
    signal: float | None
    snr: float | None
    mdd: float | None
    at_chance: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "chance": self.chance,
            "noise": self.noise,
            "signal": self.signal,
            "snr": self.snr,
            "mdd": self.mdd,
            "at_chance": list(self.at_chance),
        }


# --------------------------------------------------------------------------------------------------------------------
# estimate and compare


@dataclass
class _Part:
    """One benchmark's (or the average's) pieces: point, per-seed values, each seed's item deviations per draw."""

    point: float
    per_seed: np.ndarray
    seed_item_devs: np.ndarray | None  # (seeds, draws); None without per-item outcomes

    @property
    def item_dev(self) -> np.ndarray | None:
        """The item deviations of the seed mean, per draw."""
        return None if self.seed_item_devs is None else self.seed_item_devs.mean(axis=0)


def _aligned(ref: ItemOutcomes, o: ItemOutcomes, where: str) -> ItemOutcomes:
    if o.rule != ref.rule:
        raise ValueError(f"{where}: rule {o.rule!r} differs from {ref.rule!r}")
    if o.items != ref.items:
        pos = {item: i for i, item in enumerate(o.items)}
        if len(pos) != len(o.items) or set(pos) != set(ref.items) or len(o.items) != len(ref.items):
            raise ValueError(f"{where}: the items differ (paired comparisons need the same items in every run)")
        o = o.take(np.array([pos[item] for item in ref.items], dtype=np.intp))
    if o.clusters != ref.clusters or o.strata != ref.strata:
        raise ValueError(f"{where}: the clusters or strata of the items differ between runs")
    return o


def _bench_rng(seed: int, bench: str) -> np.random.Generator:
    tag = int.from_bytes(hashlib.sha256(bench.encode()).digest()[:8], "big")
    return np.random.default_rng([seed, tag])


def _benchmark_part(
    arms: Sequence[Sequence[SeedEntry]], coefs: Sequence[float], bench: str, n_draws: int, seed: int
) -> _Part:
    """The contrast Σ coef·arm for one benchmark: per-seed values and, with items, bootstrap item deviations."""
    n = len(arms[0])
    entries = [[arm[s][bench] for s in range(n)] for arm in arms]
    if not _all_items(entries):
        per_seed = np.array(
            [sum(c * _as_score(row[s], bench) for c, row in zip(coefs, entries, strict=True)) for s in range(n)]
        )
        return _Part(float(per_seed.mean()), per_seed, None)
    ref = entries[0][0]
    idx = cluster_index(ref)
    rule = ref.rule
    sums = [[_cluster_sums(_aligned(ref, e, f"benchmark {bench!r}"), idx) for e in row] for row in entries]
    m = sums[0][0].shape[1]
    stacked = np.hstack([z for row in sums for z in row])  # (C, arms·seeds·m)
    w = _stratum_weights(idx, _bench_rng(seed, bench), n_draws).astype(float)
    drawn = w @ stacked
    plain = stacked.sum(axis=0, keepdims=True)
    per_seed = np.zeros(n)
    seed_draws = np.zeros((n, n_draws))
    for k, c in enumerate(coefs):
        for s in range(n):
            cols = slice((k * n + s) * m, (k * n + s + 1) * m)
            per_seed[s] += c * _finish(rule, plain[:, cols])[0]
            seed_draws[s] += c * _finish(rule, drawn[:, cols])
    point = float(per_seed.mean())
    seed_devs = seed_draws - per_seed[:, None]
    return _Part(point, per_seed, seed_devs)


def _all_items(entries: list[list[ItemOutcomes | float]]) -> TypeGuard[list[list[ItemOutcomes]]]:
    return all(isinstance(e, ItemOutcomes) for row in entries for e in row)


def _as_score(entry: ItemOutcomes | float, bench: str) -> float:
    if isinstance(entry, ItemOutcomes):
        return float(headline(entry))
    try:
        return float(entry)
    except (TypeError, ValueError):
        raise ValueError(f"benchmark {bench!r}: expected a score or ItemOutcomes, got {entry!r}") from None


def _benchmarks(arms: Sequence[Sequence[SeedEntry]]) -> list[str]:
    if not arms or not arms[0]:
        raise ValueError("no seeds to summarise")
    n = len(arms[0])
    if any(len(arm) != n for arm in arms):
        raise ValueError("the arms have different numbers of seeds (pair them by seed)")
    names = list(arms[0][0])
    for arm in arms:
        for entry in arm:
            if set(entry) != set(names):
                raise ValueError(f"benchmarks differ between runs: {sorted(set(entry) ^ set(names))}")
    return names


def _average_weights(names: list[str], weights: Mapping[str, float] | None, exclude: Iterable[str]) -> np.ndarray:
    weights = dict(weights or {})
    unknown = (set(weights) | set(exclude)) - set(names)
    if unknown:
        raise ValueError(f"weights/exclude name unknown benchmarks: {sorted(unknown)}")
    excluded = set(exclude)
    w = np.array([0.0 if b in excluded else float(weights.get(b, 1.0)) for b in names])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("benchmark weights must be >= 0 and leave at least one benchmark in the average")
    return w / w.sum()


def _combine(part: _Part, t: np.ndarray | None) -> tuple[IntervalKind, np.ndarray | None]:
    """The draws of point + item deviation + seed term, and the interval kind.

    With two seeds or more the seed term s/√n·T already holds each seed's own item luck (the items one training gets
    right and another wrong move its value), so the item term keeps only the part the seeds share: the seed mean's
    item deviations scaled to the shared variance (``_shared_spread``). Counting both would widen the interval by up
    to √2 where item flips between trainings dominate.
    """
    n, item_dev = len(part.per_seed), part.item_dev
    seeds = n >= 2 and t is not None
    if not seeds and item_dev is None:
        return "none", None
    draws = np.full(next(len(a) for a in (t, item_dev) if a is not None), part.point)
    if item_dev is not None:
        if seeds:
            shared = _shared_spread(part.seed_item_devs) or 0.0
            total = float(np.std(item_dev, ddof=1))
            item_dev = item_dev * (min(shared / total, 1.0) if total > 0 else 0.0)
        draws = draws + item_dev
    if seeds:
        draws = draws + np.std(part.per_seed, ddof=1) / math.sqrt(n) * t
    kind: IntervalKind = "seeds+items" if seeds and item_dev is not None else ("seeds" if seeds else "items")
    return kind, draws


def _spread(draws: np.ndarray) -> float:
    """The standard error a normal distribution with the draws' central 95 % would have: (q97.5 − q2.5) / (2 · 1.96).

    Not the draws' standard deviation: with two or three seeds the seed term is t(1)- or t(2)-distributed, which has
    no finite variance, so that deviation is dominated by a few extreme draws (hundreds of points).
    """
    if len(draws) < 2:
        return 0.0
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return float(hi - lo) / (2 * float(_sps.norm.ppf(0.975)))


def _shared_spread(seed_devs: np.ndarray | None) -> float | None:
    """The item noise the seeds share: √(mean covariance between two seeds' item deviations), ≥ 0; None with fewer
    than two seeds or no items. What is left of the item term however many seeds are averaged."""
    if seed_devs is None or len(seed_devs) < 2:
        return None
    cov = np.cov(seed_devs)
    n = len(seed_devs)
    return math.sqrt(max(float(cov.sum() - np.trace(cov)) / (n * (n - 1)), 0.0))


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _analyse(
    arms: Sequence[Sequence[SeedEntry]],
    coefs: Sequence[float],
    n_draws: int,
    seed: int,
    weights: Mapping[str, float] | None,
    exclude: Iterable[str],
) -> tuple[list[str], dict[str, _Part], _Part, np.ndarray | None]:
    if n_draws < 1:
        raise ValueError("n_draws must be >= 1")
    names = _benchmarks(arms)
    w = _average_weights(names, weights, exclude)
    n = len(arms[0])
    parts = {b: _benchmark_part(arms, coefs, b, n_draws, seed) for b in names}
    used = [(wb, parts[b]) for wb, b in zip(w, names, strict=True) if wb > 0]  # excluded: not even as 0 × NaN
    with_items = [(wb, p) for wb, p in used if p.seed_item_devs is not None]
    avg = _Part(
        point=float(sum(wb * p.point for wb, p in used)),
        per_seed=sum(wb * p.per_seed for wb, p in used),
        seed_item_devs=sum(wb * p.seed_item_devs for wb, p in with_items) if with_items else None,
    )
    t = np.random.default_rng([seed, 0]).standard_t(n - 1, size=n_draws) if n >= 2 else None
    return names, parts, avg, t


def estimate(
    per_seed: Sequence[SeedEntry],
    *,
    n_draws: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    weights: Mapping[str, float] | None = None,
    exclude: Iterable[str] = (),
) -> Estimate:
    """One arm's score (mean over seeds of the benchmark-weighted average) with its interval, and per benchmark.

    ``per_seed``: one entry per training seed, benchmark → ItemOutcomes (or → score when there are no items).
    Interval: item noise by stratified cluster bootstrap plus seed noise s/√n·t(n−1) (see docs/decisions.md).
    """
    _, parts, avg, t = _analyse([per_seed], [1.0], n_draws, seed, weights, exclude)

    def one(part: _Part, benchmarks: dict[str, Estimate]) -> Estimate:
        kind, draws = _combine(part, t)
        if draws is None or not np.isfinite(draws).all():  # a NaN score: no interval rather than a NaN one
            return Estimate(part.point, None, kind if draws is None else "none", None, len(part.per_seed), benchmarks)
        se = _spread(draws)
        return Estimate(part.point, _interval(draws, level), kind, se, len(part.per_seed), benchmarks)

    return one(avg, {b: one(p, {}) for b, p in parts.items()})


def mcnemar(a: ItemOutcomes, b: ItemOutcomes) -> float:
    """Exact two-sided McNemar p-value on the discordant items of two runs on the same items (1 when none)."""
    b = _aligned(a, b, "mcnemar")
    a_only = int(np.sum(a.correct & ~b.correct))
    b_only = int(np.sum(~a.correct & b.correct))
    if a_only + b_only == 0:
        return 1.0
    return float(_sps.binomtest(a_only, a_only + b_only, 0.5).pvalue)


def compare(
    a_per_seed: Sequence[SeedEntry],
    b_per_seed: Sequence[SeedEntry],
    *,
    n_draws: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    weights: Mapping[str, float] | None = None,
    exclude: Iterable[str] = (),
) -> Comparison:
    """Arm A − arm B, paired by seed and by item: the average over benchmarks and each benchmark.

    Draws = point Δ + item deviation (paired stratified cluster bootstrap: the same cluster draws for both arms and
    all seeds, the benchmark's rule recomputed in each) + seed term s_Δ/√n·T, T ~ t(n−1) (n ≥ 2 seeds). The
    average uses item deviations averaged over benchmarks (independent draws per benchmark) and one T per draw.
    One seed with items: interval "items" and, for mean-rule benchmarks, ``mcnemar_p``; both leave seed noise out.
    """
    names, parts, avg, t = _analyse([a_per_seed, b_per_seed], [1.0, -1.0], n_draws, seed, weights, exclude)
    n = len(a_per_seed)

    def one(part: _Part, mcnemar_p: float | None, benchmarks: dict[str, Comparison]) -> Comparison:
        kind, draws = _combine(part, t)
        seed_sd = float(np.std(part.per_seed, ddof=1)) if n >= 2 else None
        item_se = None if part.item_dev is None else _spread(part.item_dev)
        floor = _shared_spread(part.seed_item_devs)
        noise = {"seed_sd": seed_sd, "item_se": item_se, "item_floor_se": floor}
        if draws is None or not np.isfinite(draws).all():  # a NaN score: no P(better) of 0 for it
            kind = kind if draws is None else "none"
            return Comparison(part.point, None, None, kind, mcnemar_p, None, n, benchmarks, **noise)
        p_better = float(np.mean(draws > 0) + 0.5 * np.mean(draws == 0))
        se = _spread(draws)
        return Comparison(part.point, _interval(draws, level), p_better, kind, mcnemar_p, se, n, benchmarks, **noise)

    per_bench = {}
    for b in names:
        oa, ob = a_per_seed[0][b], b_per_seed[0][b]
        mcnemar_p = None
        if n == 1 and isinstance(oa, ItemOutcomes) and isinstance(ob, ItemOutcomes) and oa.rule == "mean":
            if len(set(oa.clusters)) == len(oa.clusters):  # McNemar takes the items as independent: one per cluster
                mcnemar_p = mcnemar(oa, ob)
        per_bench[b] = one(parts[b], mcnemar_p, {})
    return one(avg, None, per_bench)


def mdd(comparison_or_se: Comparison | float | None, power: float = 0.8, level: float = 0.95) -> float:
    """Minimal detectable difference (score points): (z_{1−α/2} + z_power) · SE of the paired Δ (nan without SE)."""
    se = comparison_or_se.se if isinstance(comparison_or_se, Comparison) else comparison_or_se
    if se is None:
        return math.nan
    return float((_sps.norm.ppf(1 - (1 - level) / 2) + _sps.norm.ppf(power)) * se)


# --------------------------------------------------------------------------------------------------------------------
# benchmark health (Heineman et al. 2025, "Signal and Noise")


def signal(scores_of_models: Sequence[float]) -> float:
    """Relative dispersion of the models' scores: max_{j,k} |m_j − m_k| / mean(m)."""
    m = np.asarray(scores_of_models, dtype=float)
    if m.size == 0:
        return math.nan
    mean = float(m.mean())
    return float(m.max() - m.min()) / mean if mean != 0 else math.nan


def noise(seed_scores_of_one_model: Sequence[float]) -> float:
    """Relative standard deviation of one model's scores over seeds: std(m) / mean(m) (population std, ddof = 0)."""
    m = np.asarray(seed_scores_of_one_model, dtype=float)
    if m.size == 0:
        return math.nan
    mean = float(m.mean())
    return float(m.std()) / mean if mean != 0 else math.nan


def snr(scores_of_models: Sequence[float], seed_scores_of_one_model: Sequence[float]) -> float:
    """Signal-to-noise ratio: ``signal(scores_of_models) / noise(seed_scores_of_one_model)``."""
    s, n = signal(scores_of_models), noise(seed_scores_of_one_model)
    return s / n if n > 0 else math.nan


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def health(
    arms_per_seed: Mapping[str, Sequence[float]],
    chance: float,
    *,
    estimates: Mapping[str, Estimate] | None = None,
    se: float | None = None,
    comparisons: Iterable[Comparison] = (),
    power: float = 0.8,
    level: float = 0.95,
    n_draws: int = 2000,
    seed: int = 0,
) -> Health:
    """One benchmark's health from each arm's per-seed scores.

    noise: the mean over arms of their relative seed std (None with one seed); signal: over the arms' mean scores
    (None with fewer than two arms); snr = signal / noise. mdd from ``se``, else the median ``se`` of
    ``comparisons`` (None without either). at_chance: arms not distinguishably above chance, i.e. whose interval
    (``estimates``, else a seeds-only interval from the scores) reaches down to ``chance`` or lies below it (a model
    that answers every MME question alike scores 25, below the uniform guesser's 37.5); an arm without any interval
    counts when its score is at or below chance.
    """
    arms = {a: [float(x) for x in v] for a, v in arms_per_seed.items() if len(v)}
    means = {a: float(np.mean(v)) for a, v in arms.items()}
    noises = [noise(v) for v in arms.values() if len(v) >= 2]
    nz = _finite(float(np.mean(noises))) if noises else None
    sg = _finite(signal(list(means.values()))) if len(means) >= 2 else None
    ratio = _finite(sg / nz) if sg is not None and nz else None
    if se is None:
        ses = [c.se for c in comparisons if c.se is not None]
        se = float(np.median(ses)) if ses else None
    at_chance = []
    for a, v in arms.items():
        est = (estimates or {}).get(a)
        if est is None:
            est = estimate([{"score": x} for x in v], n_draws=n_draws, seed=seed, level=level)
        hit = est.ci[0] <= chance if est.ci is not None else est.value <= chance
        if hit:
            at_chance.append(a)
    return Health(float(chance), nz, sg, ratio, None if se is None else mdd(se, power, level), at_chance)


# --------------------------------------------------------------------------------------------------------------------
# dev/test split and decision accuracy


def dev_test_split(benchmark: str, clusters: Sequence[str], dev_fraction: float) -> np.ndarray:
    """True where a cluster is on the dev side: sha256 of f"{benchmark}\\0{cluster}" below ``dev_fraction``.

    Deterministic across runs and machines; items sharing a cluster always land on the same side.
    """
    if not 0.0 <= dev_fraction <= 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1], got {dev_fraction}")
    cut = dev_fraction * 2.0**64
    out = np.empty(len(clusters), dtype=bool)
    memo: dict[str, bool] = {}
    for i, c in enumerate(clusters):
        side = memo.get(c)
        if side is None:
            h = int.from_bytes(hashlib.sha256(f"{benchmark}\0{c}".encode()).digest()[:8], "big")
            side = memo[c] = h < cut
        out[i] = side
    return out


def restrict(o: ItemOutcomes, part: Literal["dev", "test"], benchmark: str, dev_fraction: float) -> ItemOutcomes:
    """The items of ``o`` on one side of ``dev_test_split``."""
    if part not in ("dev", "test"):
        raise ValueError(f'part must be "dev" or "test", got {part!r}')
    dev = dev_test_split(benchmark, o.clusters, dev_fraction)
    return o.subset(dev if part == "dev" else ~dev)


def decision_accuracy(pairs: Iterable[tuple[float, float]]) -> float:
    """Share of pairs whose predicted sign (e.g. Δ on a small run) matches the true sign (DataDecide); nan if none."""
    arr = np.asarray(list(pairs), dtype=float).reshape(-1, 2)
    if len(arr) == 0:
        return math.nan
    return float(np.mean(np.sign(arr[:, 0]) == np.sign(arr[:, 1])))
