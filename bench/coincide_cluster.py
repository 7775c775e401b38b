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

Without arguments a reduced size (20,000 × 1,024, k = 200) that runs in about a minute on 2 cores; the full
size is

    python bench/coincide_cluster.py --n 100000 --dim 2048 --k 1000 --niter 20

The last line is one JSON object: {"bench": "coincide_cluster", "ratio": sklearn / mixlab total time, "identical":
the same selection quality (both selections hit the budget, and faiss's clustering recovers the generating groups at
least as well as scikit-learn's, adjusted Rand index within 0.02), "seconds": mixlab's total, ...}.
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
    parser.add_argument("--seed", type=int, default=1234)
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

    t0 = time.perf_counter()
    centroids, assign = coincide.spherical_kmeans(x, args.k, niter=args.niter, seed=args.seed)
    t1 = time.perf_counter()
    picked, info = coincide.select_from_clusters(x, centroids, assign, args.fraction)
    t2 = time.perf_counter()

    km = KMeans(args.k, init="random", n_init=1, max_iter=args.niter, tol=0.0, random_state=args.seed)
    km.fit(x)
    sk_centroids = km.cluster_centers_.astype(np.float32)
    sk_centroids /= np.maximum(np.linalg.norm(sk_centroids, axis=1, keepdims=True), 1e-12)
    t3 = time.perf_counter()
    sk_picked, sk_info = coincide.select_from_clusters(x, sk_centroids, km.labels_, args.fraction)
    t4 = time.perf_counter()

    mix_total, sk_total = t2 - t0, t4 - t2
    print(f"mixlab  (faiss):   cluster {t1 - t0:7.1f} s  score+allocate+MMD {t2 - t1:6.1f} s  total {mix_total:7.1f} s")
    print(f"sklearn (KMeans):  cluster {t3 - t2:7.1f} s  score+allocate+MMD {t4 - t3:6.1f} s  total {sk_total:7.1f} s")
    print(f"sklearn / mixlab total time: {sk_total / mix_total:.2f}x  (clustering only: {(t3 - t2) / (t1 - t0):.2f}x)")
    print(f"sklearn iterations run: {km.n_iter_}")
    print(f"adjusted Rand index (faiss vs sklearn clusterings): {adjusted_rand_score(assign, km.labels_):.4f}")
    ari_faiss, ari_sklearn = adjusted_rand_score(truth, assign), adjusted_rand_score(truth, km.labels_)
    print(f"adjusted Rand index against the generating groups: faiss {ari_faiss:.4f}, sklearn {ari_sklearn:.4f}")
    overlap = len(set(picked) & set(sk_picked)) / max(1, len(picked))
    print(f"selected: mixlab {len(picked)}, sklearn {len(sk_picked)} of target {info['target']}; overlap {overlap:.3f}")
    print(f"non-empty clusters: mixlab {args.k - info['clusters_empty']}, sklearn {args.k - sk_info['clusters_empty']}")
    same_quality = len(picked) == len(sk_picked) == info["target"] and ari_faiss >= ari_sklearn - 0.02
    summary = {
        "bench": "coincide_cluster",
        "ratio": round(sk_total / mix_total, 3),
        "identical": bool(same_quality),
        "seconds": round(mix_total, 2),
        "baseline_seconds": round(sk_total, 2),
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "ari_faiss": round(float(ari_faiss), 4),
        "ari_sklearn": round(float(ari_sklearn), 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
