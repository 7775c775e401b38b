"""COINCIDE (`mixlab.selection.coincide` and the `coincide` selector): each formula against a naive loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import ValidationError

from mixlab.errors import UserError
from mixlab.plugins.selectors.coincide import CoincideSelector
from mixlab.selection import coincide as C
from mixlab.testing import StubContext


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def blobs(sizes=(50, 50, 50), dim=12, noise=0.1, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around equally spaced centres (pairwise cosine ≈ 0.35): (x float32, true labels)."""
    rng = np.random.default_rng(seed)
    centres = unit(np.eye(dim)[: len(sizes)] + 0.5 / math.sqrt(dim))
    x = [unit(centres[i] + noise * rng.normal(size=(n, dim))) for i, n in enumerate(sizes)]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.concatenate(x).astype(np.float32), labels


# --- naive references, straight from the formulas in docs/coincide.md ---


def naive_transferability(c: np.ndarray, cols=None) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    if cols is not None:
        c = c[:, cols]
    out = []
    for i in range(len(c)):
        total, count = 0.0, 0
        for j in range(len(c)):
            cos = c[i] @ c[j] / (np.linalg.norm(c[i]) * np.linalg.norm(c[j]))
            if cos <= 0.9:
                total += cos
                count += 1
        out.append(total / count)
    return np.array(out)


def naive_kernel(x: np.ndarray, sigma: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            k[a, b] = math.exp(-np.sum((x[a] - x[b]) ** 2) / (2 * sigma**2))
    return k


def naive_greedy_mmd(k: np.ndarray, n: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(n):
        best, best_val = None, math.inf
        for c in range(len(k)):
            if c in chosen:
                continue
            s = chosen + [c]
            val = k.mean() + k[np.ix_(s, s)].mean() - 2 * k[:, s].mean()
            if val < best_val - 1e-12:
                best, best_val = c, val
        chosen.append(best)
    return chosen


def naive_budgets(scores, sizes, total, tau):
    order = sorted(range(len(scores)), key=lambda c: -scores[c])
    taken, left = [0] * len(scores), total
    for r, c in enumerate(order):
        p = math.exp(scores[c] / tau) / sum(math.exp(scores[o] / tau) for o in order[r:])
        taken[c] = min(round(left * p), sizes[c])
        left -= taken[c]
    return taken


# --- formulas ---


def test_transferability_matches_naive_with_mask_and_text_slices():
    rng = np.random.default_rng(1)
    c = unit(rng.normal(size=(10, 16)) + 0.8)  # positive-ish cosines
    c[5] = unit(c[4] + 0.02 * rng.normal(size=16))  # a near-duplicate pair: cosine > 0.9, masked
    s = unit(c) @ unit(c).T
    assert (s[~np.eye(10, dtype=bool)] > 0.9).sum() >= 2 and (np.abs(s - 0.9) > 1e-3).all()
    np.testing.assert_allclose(C.transferability(c), naive_transferability(c), rtol=1e-5)

    slices = C.layout_text_slices(16, 2)
    assert slices == [(4, 8), (12, 16)]
    cols = np.r_[4:8, 12:16]
    got = C.transferability(c, slices)
    np.testing.assert_allclose(got, naive_transferability(c, cols), rtol=1e-5)
    assert not np.allclose(got, C.transferability(c))  # the restriction matters
    with pytest.raises(ValueError, match="equal"):
        C.layout_text_slices(16, 3)


def test_density_matches_naive_double_loop():
    x, _ = blobs((30,), dim=8, noise=0.3, seed=2)
    for sigma in (1.0, 0.5):
        assert C.density(x, sigma) == pytest.approx(naive_kernel(x, sigma).mean(), rel=1e-9)
    assert C.density(x[:1]) == pytest.approx(1.0)  # a singleton: only the diagonal
    assert math.exp(-2) < C.density(x) < 1.0


def test_budgets_hand_worked_example():
    tau = 0.5
    scores = tau * np.log([3.0, 1.0, 6.0])  # exp(s/τ) = 3, 1, 6
    # order 2, 0, 1. Cluster 2: p = 6/10, round(40·0.6) = 24 > size 3 → takes 3, R = 37.
    # Cluster 0: p = 3/4, round(27.75) = 28 → takes 28, R = 9. Cluster 1: p = 1 → takes 9.
    order, budget, taken = C.cluster_budgets(scores, np.array([50, 50, 3]), 40, tau)
    assert order.tolist() == [2, 0, 1]
    assert budget.tolist() == [28, 9, 24]
    assert taken.tolist() == [28, 9, 3]


def test_budgets_match_naive_and_favour_high_scores():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0.2, 0.8, size=25)
    sizes = rng.integers(1, 40, size=25)
    taken = C.cluster_budgets(scores, sizes, 200, 0.1)[2]
    assert taken.tolist() == naive_budgets(scores.tolist(), sizes.tolist(), 200, 0.1)
    assert taken.sum() == 200

    big = np.full(25, 10_000)  # no cap binds: the sequential scheme is a plain softmax, up to rounding
    taken = C.cluster_budgets(scores, big, 1000, 0.1)[2]
    soft = np.exp(scores / 0.1) / np.exp(scores / 0.1).sum()
    assert taken.sum() == 1000 and np.abs(taken - 1000 * soft).max() <= 2
    by_score = taken[np.argsort(-scores)]
    assert (np.diff(by_score) <= 1).all() and by_score[0] > 5 * by_score[-1]


def test_budgets_are_stable_and_may_fall_short():
    taken = C.cluster_budgets(np.array([0.0, 100.0, 50.0]), np.array([500, 500, 500]), 30, 0.1)[2]
    assert taken.tolist() == [0, 30, 0]  # exp(1000) would overflow without the log-sum-exp
    # the low-score clusters are too small to absorb the rest: fewer than the target, never more
    taken = C.cluster_budgets(np.array([1.0, 0.9, 0.8]), np.array([2, 2, 2]), 10, 0.1)[2]
    assert taken.tolist() == [2, 2, 2]


def test_greedy_mmd_matches_brute_force():
    x, _ = blobs((40,), dim=8, noise=0.4, seed=4)
    k = C.gaussian_kernel(x)
    np.testing.assert_allclose(k, naive_kernel(x, 1.0), rtol=1e-12, atol=1e-12)
    for n in (1, 7, 15):
        assert C.greedy_mmd(k, n) == naive_greedy_mmd(k, n)
    assert C.greedy_mmd(k, 0) == []
    assert sorted(C.greedy_mmd(k, 99)) == list(range(40))


def test_greedy_mmd_ties_go_to_the_lowest_index():
    k = np.ones((4, 4))  # every candidate equally good at every step
    assert C.greedy_mmd(k, 3) == [0, 1, 2]


# --- clustering and the whole selection ---


def test_spherical_kmeans_assignment_is_consistent():
    x, _ = blobs(seed=5)
    centroids, assign = C.spherical_kmeans(x, 3, niter=20, seed=1)
    assert centroids.shape == (3, 12)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    assert (assign == np.argmax(x @ centroids.T, axis=1)).all()
    for c in np.unique(assign):  # converged spherical centroids: the normalised mean of their members
        np.testing.assert_allclose(centroids[c], unit(x[assign == c].mean(axis=0)), atol=1e-4)
    centroids, assign = C.spherical_kmeans(x[:5], 50, niter=5)
    assert len(centroids) == 5 and assign.max() < 5


def test_kmeans_collapse_is_reported():
    x = np.tile(unit(np.arange(1.0, 9.0)), (40, 1)).astype(np.float32)
    with pytest.raises(ValueError, match="collapsed"):
        C.spherical_kmeans(x, 4, niter=5)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_select_respects_fraction_and_is_deterministic(fraction):
    x, _ = blobs((60, 60, 60), noise=0.2, seed=6)
    idx, info = C.select(x, fraction, k=9, niter=20, seed=7)
    target = C.target_count(len(x), fraction)
    assert info["target"] == target and len(idx) == info["selected"]
    assert target - 2 <= len(idx) <= target
    assert len(set(idx)) == len(idx) and 0 <= min(idx) and max(idx) < len(x)
    assert sum(info["clusters"]["taken"]) == len(idx) and sum(info["clusters"]["size"]) == len(x)
    again, info2 = C.select(x, fraction, k=9, niter=20, seed=7)
    assert again == idx and info2 == info
    json.dumps(info)


def test_large_cluster_path_and_no_cache_agree(monkeypatch):
    x, _ = blobs((60, 60, 60), noise=0.2, seed=8)
    idx = C.select(x, 0.3, k=3, niter=20, seed=1)[0]
    monkeypatch.setattr(C, "CACHE_BYTES", 0)  # kernels rebuilt for the MMD pass
    assert C.select(x, 0.3, k=3, niter=20, seed=1)[0] == idx
    monkeypatch.setattr(C, "BLOCK_BYTES", 8 * 60 * 7)  # kernels built 7 rows at a time, MMD rows on the fly
    assert C.select(x, 0.3, k=3, niter=20, seed=1)[0] == idx


def test_dense_duplicate_cluster_gets_less_than_its_share():
    """Four clusters of 60; cluster 3 is 60 near-copies of one point (density ≈ 1), so s = T/D is lowest there."""

    def run(dup_noise):
        x, labels = blobs((60, 60, 60, 60), noise=0.12, seed=9)
        rng = np.random.default_rng(10)
        x[180:] = unit(x[180] + dup_noise * rng.normal(size=(60, 12)))
        centroids = unit(np.stack([x[labels == c].mean(axis=0) for c in range(4)]))
        idx, info = C.select_from_clusters(x, centroids, labels, 0.2)
        return sum(i >= 180 for i in idx), info

    dup, info = run(1e-3)
    assert info["clusters"]["density"][3] > 0.99 > max(info["clusters"]["density"][:3])
    assert dup < 48 / 4 and dup == min(info["clusters"]["taken"])  # size-proportional share: 12 of 48
    control, _ = run(0.12)  # the same cluster, spread like the others
    assert dup < control


# --- the plugin ---

POOL = [{"id": f"s/{i}", "source": "s"} for i in range(150)]


def plugin(scores, ctx=None, **options):
    return CoincideSelector(CoincideSelector.Options(**options), "sel").select(POOL, scores, ctx or StubContext())


def test_plugin_selects_unique_ids_with_progress():
    x, _ = blobs(noise=0.2, seed=11)
    x = np.concatenate([x, x], axis=1) / math.sqrt(2)  # two [image, text] blocks
    ctx = StubContext()
    sel = plugin({"embedding": x}, ctx, k=5, niter=10, layout_blocks=2)
    assert 25 <= len(sel.ids) <= 30 and len(set(sel.ids)) == len(sel.ids) and set(sel.ids) <= {s["id"] for s in POOL}
    assert ctx.progress_totals == [10] and ctx.advanced == [1] * 10
    assert sel.info["text_columns"] == [[6, 12], [18, 24]] and sel.info["column"] == "embedding"
    json.dumps(sel.info)
    assert plugin({"embedding": x}, k=5, niter=10, layout_blocks=2).ids == sel.ids


def test_faiss_blas_hint(monkeypatch):
    """A message naming the core type when faiss's OpenBLAS runs generic kernels on a CPU with better ones."""
    import threadpoolctl

    def blas(architecture: str):
        return lambda: [{"internal_api": "openblas", "architecture": architecture}]

    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.setattr(C, "_cpu_coretype", lambda: "SkylakeX")
    monkeypatch.setattr(threadpoolctl, "threadpool_info", blas("Prescott"))
    hint = C.faiss_blas_hint()
    assert hint is not None and "OPENBLAS_CORETYPE=SkylakeX" in hint
    monkeypatch.setattr(C, "_cpu_coretype", lambda: None)  # a CPU without AVX2: nothing better to pick
    assert C.faiss_blas_hint() is None
    monkeypatch.setattr(C, "_cpu_coretype", lambda: "SkylakeX")
    monkeypatch.setattr(threadpoolctl, "threadpool_info", blas("Haswell"))  # proper kernels already
    assert C.faiss_blas_hint() is None
    monkeypatch.setattr(threadpoolctl, "threadpool_info", blas("Prescott"))
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # the user chose: no hint
    assert C.faiss_blas_hint() is None


def test_plugin_user_errors():
    with pytest.raises(UserError, match="'sel'.*no score column 'embedding'.*ppl"):
        plugin({"ppl": np.zeros(150)})
    with pytest.raises(UserError, match="'sel'.*2-D"):
        plugin({"embedding": np.zeros(150)})
    with pytest.raises(UserError, match="layout_blocks"):
        plugin({"embedding": np.ones((150, 10))}, layout_blocks=3)
    with pytest.raises(UserError, match="collapsed"):
        plugin({"embedding": np.ones((150, 8)) / math.sqrt(8)}, k=4, niter=3)
    with pytest.raises(ValidationError, match="at most one"):
        CoincideSelector.Options(layout_blocks=2, text_slices=[(0, 4)])
