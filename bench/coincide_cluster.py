"""COINCIDE selection cost: mixlab's faiss spherical k-means path against the same clustering in scikit-learn.

Both arms run on the same synthetic unit embeddings (points around random centres that share a common direction, so
centroid cosines are positive as with tanh activations) and share the downstream steps (transferability, density,
budgets, greedy MMD from `mixlab.selection.coincide.select_from_clusters`). Only the clustering differs:

* mixlab: `faiss.Kmeans(spherical=True)` with `niter` iterations, then assignment by inner product;
* scikit-learn: `KMeans(init="random", n_init=1, max_iter=niter, tol=0)` on the same (already L2-normalised) rows,
  its `cluster_centers_` L2-normalised afterwards and its `labels_` kept. Plain (not spherical) Lloyd steps, so it
  is the nearest off-the-shelf equivalent, not an identical algorithm; `tol=0` stops only when labels stop changing.

Prints wall times for each part, the end-to-end ratio, and the adjusted Rand index between the two clusterings.

faiss-cpu wheels bundle their own OpenBLAS (0.3.15 in faiss-cpu 1.15), which does not recognise recent Xeons
(Sapphire Rapids) and falls back to its generic "Prescott" kernels, several times slower than numpy's OpenBLAS.
`--openblas-coretype SkylakeX` (or `OPENBLAS_CORETYPE=SkylakeX` in the environment; `Haswell` on AVX2-only CPUs)
picks a proper kernel; it must be set before faiss is imported. The script prints the core each OpenBLAS uses.

Both arms run `--restarts` times with k-means seeds seed, seed + 1, ... on the same data (the clustering's quality
moves a lot with the seed); times are summed, and the ARI difference gets a paired 95% t interval over the restarts.
Without arguments a reduced size (20,000 × 1,024, k = 200, 5 restarts) that runs in about 20 s on 2 cores; the full
size is

    python bench/coincide_cluster.py --n 100000 --dim 2048 --k 1000 --niter 20 --restarts 3

The last line is one JSON object: {"bench": "coincide_cluster", "ratio": sklearn / mixlab total time, "identical":
the same selection quality (both selections hit the budget in every restart, and faiss's clustering is not
distinguishably worse at recovering the generating groups: the interval's upper end is not below 0; with one
restart, its adjusted Rand index is within 0.02 of scikit-learn's), "seconds": mixlab's total per restart, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def make_embeddings(n: int, dim: int, clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit rows in `clusters` groups of random size: (float32 rows built in chunks, true group of each row)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim).astype(np.float32)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32) + common
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.choice(clusters, size=n, p=rng.dirichlet(np.full(clusters, 5.0)))
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        part = slice(start, start + 8192)
        g = rng.standard_normal(size=(len(label[part]), dim), dtype=np.float32)
        x[part] = centres[label[part]] + noise * g / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="rows (the full size: 100000)")
    parser.add_argument("--dim", type=int, default=1024, help="embedding width (the full size: 2048)")
    parser.add_argument("--k", type=int, default=200, help="clusters asked of both k-means (the full size: 1000)")
    parser.add_argument("--true-clusters", type=int, default=None, help="groups in the data (default: k)")
    parser.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the unit centres")
    parser.add_argument("--niter", type=int, default=20, help="k-means iterations (sklearn: max_iter)")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1234, help="data seed, and the first k-means seed")
    parser.add_argument("--restarts", type=int, default=5, help="k-means seeds per arm (3 for the recorded full size)")
    parser.add_argument("--openblas-coretype", default=None, help="set OPENBLAS_CORETYPE before importing faiss")
    args = parser.parse_args()
    if args.openblas_coretype:
        os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype  # numpy's OpenBLAS is already loaded: unaffected

    import faiss
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from mixlab.selection import coincide

    t = time.perf_counter()
    x, truth = make_embeddings(args.n, args.dim, args.true_clusters or args.k, args.noise, args.seed)
    size = f"{x.nbytes / 2**30:.2f} GiB"
    print(f"data: {args.n} x {args.dim} float32 unit rows ({size}) in {time.perf_counter() - t:.1f} s")
    print(f"threads: faiss {faiss.omp_get_max_threads()}, cpus {os.cpu_count()}")
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
        print("OpenBLAS cores: " + "; ".join(f"{i['version']} {i.get('architecture')}" for i in blas))
    except ImportError:
        pass

    mix_times, sk_times, aris, overlaps, hit = [], [], [], [], True
    for restart in range(args.restarts):  # k-means seeds seed, seed + 1, ... on the same data, both arms alike
        seed = args.seed + restart
        t0 = time.perf_counter()
        centroids, assign = coincide.spherical_kmeans(x, args.k, niter=args.niter, seed=seed)
        t1 = time.perf_counter()
        picked, info = coincide.select_from_clusters(x, centroids, assign, args.fraction)
        t2 = time.perf_counter()
        km = KMeans(args.k, init="random", n_init=1, max_iter=args.niter, tol=0.0, random_state=seed)
        km.fit(x)
        sk_centroids = km.cluster_centers_.astype(np.float32)
        sk_centroids /= np.maximum(np.linalg.norm(sk_centroids, axis=1, keepdims=True), 1e-12)
        t3 = time.perf_counter()
        sk_picked, sk_info = coincide.select_from_clusters(x, sk_centroids, km.labels_, args.fraction)
        t4 = time.perf_counter()
        mix_times.append((t1 - t0, t2 - t1))
        sk_times.append((t3 - t2, t4 - t3))
        aris.append((adjusted_rand_score(truth, assign), adjusted_rand_score(truth, km.labels_)))
        overlaps.append(len(set(picked) & set(sk_picked)) / max(1, len(picked)))
        hit = hit and len(picked) == len(sk_picked) == info["target"]
        print(
            f"restart {restart} (seed {seed}): mixlab {t1 - t0:.1f} + {t2 - t1:.1f} s, sklearn {t3 - t2:.1f} + "
            f"{t4 - t3:.1f} s ({km.n_iter_} iterations); ARI against the generating groups faiss {aris[-1][0]:.4f}, "
            f"sklearn {aris[-1][1]:.4f}; selected {len(picked)} / {len(sk_picked)} of {info['target']}, overlap "
            f"{overlaps[-1]:.3f}; non-empty clusters {args.k - info['clusters_empty']} / "
            f"{args.k - sk_info['clusters_empty']}"
        )

    mix_cluster, mix_rest = np.sum(mix_times, axis=0)
    sk_cluster, sk_rest = np.sum(sk_times, axis=0)
    mix_total, sk_total = mix_cluster + mix_rest, sk_cluster + sk_rest
    per = f" (sum of {args.restarts} restarts)" if args.restarts > 1 else ""
    for label, cluster, rest in (
        ("mixlab  (faiss): ", mix_cluster, mix_rest),
        ("sklearn (KMeans):", sk_cluster, sk_rest),
    ):
        print(
            f"{label}  cluster {cluster:7.1f} s  score+allocate+MMD {rest:6.1f} s  total {cluster + rest:7.1f} s{per}"
        )
    print(
        f"sklearn / mixlab total time: {sk_total / mix_total:.2f}x  (clustering only: {sk_cluster / mix_cluster:.2f}x)"
    )
    ari_faiss, ari_sklearn = np.mean(aris, axis=0)
    gap = np.array([a - b for a, b in aris])
    if len(gap) > 1:  # paired over restarts: is faiss's clustering distinguishably worse at recovering the groups?
        from scipy import stats

        half = stats.t.ppf(0.975, len(gap) - 1) * gap.std(ddof=1) / np.sqrt(len(gap))
        low, high = gap.mean() - half, gap.mean() + half
        verdict = "faiss better" if low > 0 else "faiss worse" if high < 0 else "not distinguishable"
        print(
            f"ARI faiss - sklearn: {gap.mean():+.4f} [{low:+.4f}, {high:+.4f}] (95% t, {len(gap)} restarts): {verdict}"
        )
        same_quality = hit and high >= 0
    else:  # one restart, no interval: within 0.02
        print(f"ARI faiss - sklearn: {gap[0]:+.4f} (one restart, no interval)")
        same_quality = hit and gap[0] >= -0.02
    summary = {
        "bench": "coincide_cluster",
        "ratio": round(sk_total / mix_total, 3),
        "identical": bool(same_quality),
        "seconds": round(mix_total / args.restarts, 2),
        "baseline_seconds": round(sk_total / args.restarts, 2),
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "restarts": args.restarts,
        "ari_faiss": round(float(ari_faiss), 4),
        "ari_sklearn": round(float(ari_sklearn), 4),
        "overlap": round(float(np.mean(overlaps)), 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
