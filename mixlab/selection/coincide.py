"""COINCIDE (Lee, Li, Hwang, EMNLP 2024): cluster, score clusters by transferability / density, allocate, pick MMD
prototypes inside each cluster.

Plain numpy + faiss; the formulas and defaults follow the authors' released code (G-JWLee/COINCIDE_code), and
docs/coincide.md states them in full. The steps:

1. spherical k-means (faiss, unit centroids), each row assigned to the centroid of largest inner product;
2. transferability T_i: mean cosine of centroid i to the other centroids, similarities > 0.9 (self included) masked
   out, optionally on some columns only (the text half of each layer block);
3. density D_i: mean Gaussian kernel over all pairs of the cluster, diagonal included, float64;
4. budgets: clusters in descending s = T/D; each takes round(R · softmax over the clusters not yet processed at
   temperature τ), capped at its size; R is what is left of N = floor(fraction · n);
5. inside a cluster that is not taken whole, greedy MMD-critic prototypes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from mixlab.selection.budget import target_count

SAMPLES_PER_CLUSTER = 66
"""LLaVA-665K with 10,000 clusters in the official run: about 66 samples per cluster (docs/coincide.md)."""

BLOCK_BYTES = 512 * 2**20
"""Largest kernel block held at once (a cluster of up to 8,192 rows whole; building one takes twice this); bigger
clusters are handled row block by row block, their MMD picks one kernel row at a time (exact, just slower)."""

CACHE_BYTES = 512 * 2**20
"""Kernel matrices kept from the density pass for the MMD pass, in total."""

Slices = Sequence[tuple[int, int]] | Sequence[Sequence[int]]


def default_k(n: int) -> int:
    """The paper's cluster count scaled to n: round(n / 66), at least 1."""
    return max(1, round(n / SAMPLES_PER_CLUSTER))


def check_not_collapsed(centroids: np.ndarray, tol: float = 1e-4) -> None:
    """Raise ValueError if the centroids are non-finite, all zero, or all the same direction (COINCIDE issue #7)."""
    c = np.asarray(centroids, dtype=np.float64)
    if not np.isfinite(c).all():
        raise ValueError("spherical k-means gave non-finite centroids; check the embeddings for NaN or inf")
    norms = np.linalg.norm(c, axis=1)
    if not (norms > 1e-6).any():
        raise ValueError("spherical k-means gave all-zero centroids; the embeddings are all zero")
    if len(c) < 2:
        return
    first = int(np.argmax(norms > 1e-6))
    ref = c[first] / norms[first]
    cos = (c @ ref) / np.maximum(norms, 1e-12)
    if cos.min() > 1 - tol:
        raise ValueError(
            f"spherical k-means collapsed: all {len(c)} centroids point the same way (smallest cosine "
            f"{cos.min():.6f}), as in COINCIDE_code issue #7. Check that the embeddings are not constant or "
            "degenerate, or try another seed or faiss version."
        )


def _cpu_coretype() -> str | None:
    """The OpenBLAS core type for this CPU's vector extensions (SkylakeX: AVX-512, Haswell: AVX2), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return None
    return "SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else None


def prefer_native_blas() -> None:
    """Before faiss first loads: set OPENBLAS_CORETYPE (unless the user did) so its bundled OpenBLAS uses this CPU's
    kernels instead of falling back to generic ones on CPUs it does not know (see faiss_blas_hint)."""
    import sys

    if "faiss" not in sys.modules and not os.environ.get("OPENBLAS_CORETYPE") and (core := _cpu_coretype()):
        os.environ["OPENBLAS_CORETYPE"] = core


def faiss_blas_hint() -> str | None:
    """A hint when faiss's bundled OpenBLAS fell back to generic 'Prescott' kernels on an AVX2/AVX-512 CPU, else None.

    faiss-cpu 1.15 wheels ship OpenBLAS 0.3.15, which does not recognise e.g. Sapphire Rapids; its k-means then runs
    several times slower (6x in bench/coincide_cluster.py). OPENBLAS_CORETYPE, set before faiss loads, fixes it.
    """
    if os.environ.get("OPENBLAS_CORETYPE"):
        return None
    try:
        import faiss  # noqa: F401  (loads its OpenBLAS)
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    cores = [i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"]
    if "Prescott" not in cores:
        return None
    core = _cpu_coretype()
    if core is None:
        return None
    return (
        "faiss's bundled OpenBLAS uses generic 'Prescott' kernels on this CPU, so k-means runs several times slower "
        f"than it could; set OPENBLAS_CORETYPE={core} in the environment before starting mixlab."
    )


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 50, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """faiss spherical k-means, k clipped to [1, n]: (unit centroids k×d, assignment by largest inner product)."""
    prefer_native_blas()
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"spherical_kmeans needs a non-empty 2-D array, got shape {x.shape}")
    n, d = x.shape
    k = max(1, min(int(k), n))
    # min_points_per_centroid only silences faiss's "please provide at least ... points" warning; the official
    # defaults (max_points_per_centroid=256 subsampling, random init) are kept.
    km = faiss.Kmeans(d, k, niter=int(niter), seed=int(seed), spherical=True, min_points_per_centroid=1)
    km.train(x)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    check_not_collapsed(centroids)
    index = faiss.IndexFlatIP(d)
    index.add(centroids)
    _, nearest = index.search(x, 1)
    return centroids, nearest[:, 0].astype(np.int64)


def layout_text_slices(dim: int, blocks: int) -> list[tuple[int, int]]:
    """Column ranges of the text halves of `blocks` equal [image, text] blocks spanning `dim` columns."""
    if blocks < 1 or dim % (2 * blocks):
        raise ValueError(f"{dim} columns do not split into {blocks} equal [image, text] blocks of even size")
    size = dim // blocks
    return [(b * size + size // 2, (b + 1) * size) for b in range(blocks)]


def slice_columns(dim: int, slices: Slices | None) -> np.ndarray | None:
    """The column indices named by [start, stop) ranges (validated against dim), or None for all columns."""
    if slices is None:
        return None
    cols = []
    for pair in slices:
        start, stop = (int(v) for v in pair)
        if not 0 <= start < stop <= dim:
            raise ValueError(f"column range [{start}, {stop}) is not inside [0, {dim})")
        cols.append(np.arange(start, stop))
    if not cols:
        raise ValueError("text_slices is empty")
    return np.concatenate(cols)


def transferability(
    centroids: np.ndarray, text_slices: Slices | None = None, threshold: float = 0.9, chunk: int = 2048
) -> np.ndarray:
    """T_i = Σ_j S_ij / #{j: S_ij ≤ 0.9}; S = centroid cosines (optionally on some columns), entries > 0.9 zeroed."""
    c = np.asarray(centroids)
    cols = slice_columns(c.shape[1], text_slices)
    if cols is not None:
        c = c[:, cols]
    # float32 like sklearn's cosine_similarity on faiss's float32 centroids; zero rows stay zero (similarity 0)
    norms = np.linalg.norm(c.astype(np.float64), axis=1)
    c = (c / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    k = len(c)
    total = np.zeros(k)
    count = np.zeros(k, dtype=np.int64)
    for start in range(0, k, chunk):
        s = c[start : start + chunk] @ c.T
        keep = s <= threshold
        total[start : start + chunk] = np.where(keep, s, 0).sum(axis=1, dtype=np.float64)
        count[start : start + chunk] = keep.sum(axis=1)
    # every similarity above the threshold (only possible with near-duplicate centroids): 0 rather than 0/0
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def gaussian_kernel(
    x: np.ndarray, sigma: float = 1.0, rows: np.ndarray | slice | None = None, sq: np.ndarray | None = None
) -> np.ndarray:
    """K[a, b] = exp(-‖x_a − x_b‖² / (2σ²)) in float64, for the given rows of x (default all) against all of x.

    ``sq``: the rows' squared norms (``squared_norms(x)``) when the caller asks for many blocks of one x.
    """
    x = np.asarray(x, dtype=np.float64)
    if sq is None:
        sq = squared_norms(x)
    if rows is None:
        rows = slice(None)
    # (‖a‖² + ‖b‖²) − 2·a·b, clipped at 0, then exp(−d² / 2σ²): step by step in place, two blocks' memory at most
    d2 = sq[rows][:, None] + sq[None, :]
    inner = x[rows] @ x.T
    inner *= 2.0
    d2 -= inner
    del inner
    np.maximum(d2, 0.0, out=d2)
    np.negative(d2, out=d2)
    d2 /= 2.0 * sigma**2
    return np.exp(d2, out=d2)


def squared_norms(x: np.ndarray) -> np.ndarray:
    """‖x_a‖² of every row (float64 x)."""
    return np.einsum("ij,ij->i", x, x)


def _kernel_row(x: np.ndarray, sigma: float, sq: np.ndarray, i: int) -> np.ndarray:
    """Row i of the Gaussian kernel of x, computed on demand (when the whole kernel does not fit in memory)."""
    return gaussian_kernel(x, sigma, np.array([i]), sq)[0]


def density(x_cluster: np.ndarray, sigma: float = 1.0) -> float:
    """D = mean of the Gaussian kernel over all pairs of the cluster, diagonal included (float64)."""
    return float(_kernel_stats(np.asarray(x_cluster, dtype=np.float64), sigma)[0].mean())


def _kernel_stats(x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(column means of K, diagonal of K, K itself if it fits in one block else None), K built block by block."""
    m = len(x)
    rows_per_block = max(1, BLOCK_BYTES // (8 * m))
    if rows_per_block >= m:
        kernel = gaussian_kernel(x, sigma)
        return kernel.mean(axis=0), np.diag(kernel).copy(), kernel
    colsum = np.zeros(m)
    diag = np.empty(m)
    sq = squared_norms(x)
    for start in range(0, m, rows_per_block):
        block = gaussian_kernel(x, sigma, slice(start, start + rows_per_block), sq)
        colsum += block.sum(axis=0)
        diag[start : start + len(block)] = block[np.arange(len(block)), np.arange(start, start + len(block))]
    return colsum / m, diag, None


def _greedy_mmd(row: Callable[[int], np.ndarray], colmean: np.ndarray, diag: np.ndarray, n: int) -> list[int]:
    """Greedy MMD² prototypes from kernel row access, column means and diagonal (see greedy_mmd)."""
    m = len(colmean)
    n = max(0, min(int(n), m))
    kxx = float(colmean.mean())
    to_chosen = np.zeros(m)  # Σ_{s∈S} K[s, c] for every candidate c
    pair_sum = 0.0  # Σ_{a,b∈S} K[a, b]
    cross = 0.0  # Σ_{a∈S} mean_x K[x, a]
    taken = np.zeros(m, dtype=bool)
    chosen: list[int] = []
    for step in range(n):
        size = step + 1
        # MMD²(S ∪ {c}) = mean K_XX + mean K[S∪c, S∪c] − 2 mean K[X, S∪c], for all candidates at once
        mmd2 = kxx + (pair_sum + 2.0 * to_chosen + diag) / size**2 - 2.0 * (cross + colmean) / size
        mmd2[taken] = np.inf
        best = int(np.argmin(mmd2))  # first minimum: ties go to the lowest index
        chosen.append(best)
        taken[best] = True
        pair_sum += 2.0 * to_chosen[best] + diag[best]
        cross += colmean[best]
        to_chosen += row(best)
    return chosen


def greedy_mmd(K: np.ndarray, n: int) -> list[int]:
    """MMD-critic prototypes: n times add the candidate minimising MMD²(X, S ∪ {c}); O(|C|) per step, ties → lowest."""
    K = np.asarray(K, dtype=np.float64)
    return _greedy_mmd(lambda i: K[i], K.mean(axis=0), np.diag(K).copy(), n)


def cluster_budgets(
    scores: np.ndarray, sizes: np.ndarray, total: int, temperature: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequential softmax allocation: (order by score descending, per-cluster budget n_c, per-cluster taken).

    For each cluster c in order, p_c = exp(s_c/τ) / Σ_{c' not yet processed, c included} exp(s_c'/τ) (computed from a
    reversed running log-sum-exp, so no overflow), n_c = round(R · p_c) (Python's half-to-even), taken_c =
    min(n_c, |C_c|), R −= taken_c. The last cluster has p = 1, so Σ taken = total unless the low-score clusters are
    too small to absorb what is left (Σ taken ≤ total always).
    """
    s = np.asarray(scores, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    if s.shape != sizes.shape or s.ndim != 1:
        raise ValueError("scores and sizes must be 1-D arrays of the same length")
    if not np.isfinite(s).all():
        raise ValueError("cluster scores must be finite")
    order = np.argsort(-s, kind="stable")  # ties: lower cluster index first
    z = s[order] / temperature
    log_rest = np.logaddexp.accumulate(z[::-1])[::-1]  # log Σ_{r' ≥ r} exp(z_r')
    budget = np.zeros(len(s), dtype=np.int64)
    taken = np.zeros(len(s), dtype=np.int64)
    left = int(total)
    for rank, c in enumerate(order):
        n_c = int(round(left * math.exp(z[rank] - log_rest[rank])))
        budget[c] = n_c
        taken[c] = min(n_c, int(sizes[c]))
        left -= int(taken[c])
    return order, budget, taken


def select_from_clusters(
    embeddings: np.ndarray,
    centroids: np.ndarray,
    assign: np.ndarray,
    fraction: float,
    temperature: float = 0.1,
    sigma: float = 1.0,
    text_slices: Slices | None = None,
    advance: Callable[..., Any] | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """Steps 2–5 on a given clustering; returns (row indices in selection order, info). See select()."""
    x = np.asarray(embeddings)
    assign = np.asarray(assign, dtype=np.int64)
    n, k = len(x), len(centroids)
    if assign.shape != (n,):
        raise ValueError("assign must give one cluster per row")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    sizes = np.bincount(assign, minlength=k)
    by_cluster = np.argsort(assign, kind="stable")  # members of each cluster in pool order
    starts = np.concatenate([[0], np.cumsum(sizes)])
    members = [by_cluster[starts[c] : starts[c + 1]] for c in range(k)]

    trans = transferability(centroids, text_slices)
    dens = np.full(k, np.nan)
    stats: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
    cached = 0
    for c in range(k):
        if sizes[c]:
            colmean, diag, kernel = _kernel_stats(x[members[c]].astype(np.float64), sigma)
            dens[c] = colmean.mean()
            if kernel is not None and cached + kernel.nbytes <= CACHE_BYTES:
                cached += kernel.nbytes
            else:
                kernel = None
            stats[c] = (colmean, diag, kernel)
        if advance:
            advance()

    nonempty = np.flatnonzero(sizes)
    score = np.full(k, np.nan)
    score[nonempty] = trans[nonempty] / dens[nonempty]
    target = target_count(n, fraction)
    order, sub_budget, sub_taken = cluster_budgets(score[nonempty], sizes[nonempty], target, temperature)
    budget = np.zeros(k, dtype=np.int64)
    taken = np.zeros(k, dtype=np.int64)
    budget[nonempty], taken[nonempty] = sub_budget, sub_taken

    picked: list[int] = []
    for c in nonempty[order]:
        rows = members[c]
        if taken[c] >= sizes[c]:
            picked += rows.tolist()
        elif taken[c] > 0:
            colmean, diag, kernel = stats[c]
            if kernel is None:
                xc = x[rows].astype(np.float64)
                if BLOCK_BYTES >= 8 * len(rows) ** 2:
                    kernel = gaussian_kernel(xc, sigma)
            if kernel is not None:
                local = _greedy_mmd(kernel.__getitem__, colmean, diag, int(taken[c]))
            else:
                local = _greedy_mmd(partial(_kernel_row, xc, sigma, squared_norms(xc)), colmean, diag, int(taken[c]))
            picked += rows[local].tolist()
        stats.pop(int(c), None)
        if advance:
            advance()

    def opt(values: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else float(v) for v in values]

    info = {
        "n": int(n),
        "k": int(k),
        "fraction": float(fraction),
        "target": int(target),
        "selected": len(picked),
        "temperature": float(temperature),
        "sigma": float(sigma),
        "text_columns": None if text_slices is None else [[int(a), int(b)] for a, b in text_slices],
        "clusters_empty": int(k - len(nonempty)),
        "clusters_whole": int(((taken == sizes) & (sizes > 0)).sum()),
        "clusters_unused": int(((taken == 0) & (sizes > 0)).sum()),
        "clusters": {
            "size": sizes.tolist(),
            "transferability": [float(v) for v in trans],
            "density": opt(dens),
            "score": opt(score),
            "budget": budget.tolist(),
            "taken": taken.tolist(),
        },
    }
    return picked, info


def select(
    embeddings: np.ndarray,
    fraction: float = 0.2,
    k: int | None = None,
    niter: int = 50,
    seed: int = 1234,
    temperature: float = 0.1,
    sigma: float = 1.0,
    text_slices: Slices | None = None,
    advance: Callable[..., Any] | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """COINCIDE on an n×d array: (row indices in selection order, JSON-able info).

    Rows come back grouped by cluster rank (best score first), MMD pick order inside a cluster, pool order inside a
    cluster taken whole. Their number is at most N = floor(fraction · n) and equals it unless the lowest-score
    clusters run out of members (see cluster_budgets); per-cluster rounding never adds rows. `k` defaults to
    round(n / 66) and is clipped to n; `advance()` is called twice per cluster (density pass, selection pass).
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"embeddings have {int((~np.isfinite(x)).any(axis=1).sum())} rows with NaN or inf")
    centroids, assign = spherical_kmeans(x, default_k(len(x)) if k is None else k, niter=niter, seed=seed)
    picked, info = select_from_clusters(x, centroids, assign, fraction, temperature, sigma, text_slices, advance)
    info["niter"], info["seed"] = int(niter), int(seed)
    return picked, info
