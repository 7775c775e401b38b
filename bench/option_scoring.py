"""Option scoring: the shared-prefix path of `choose` / `continuation_logprobs` against the per-option reference path.

Same model (the tiny preset built from config, tokenizer trained on toy-world samples, as bench/score_throughput.py
builds it) and the toy world's four benchmarks (MME, MMBench, SEED, ScienceQA), asked as the `benchmarks` evaluator
asks them in likelihood mode: "letters" (the lettered prompt, each letter or Yes/No scored; the evaluator's default)
and "text" (the short-answer prompt, each option's text scored: multi-token options; MME is yes/no, so not repeated).
The reference is `continuation_logprobs(..., shared_prefix=False)`: every (question, option) pair collated and run in
full, image included. The shared-prefix path runs each image and prompt once and scores the options from the cached
keys and values. Both return (log-likelihood, is greedy) per pair; `choose` is the argmax over them.
Identity: max relative difference of the log-likelihoods <= 1e-5, the same greedy flags and the same picks.
Each method runs `--repeats` times in rotation and its fastest wall and CPU times are reported (CPU time is steadier
on a shared machine; the headline ratio is the CPU-time one, letters mode). The last line is one JSON object.

    python bench/option_scoring.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
from score_throughput import build_model, timed, toy_samples


def benchmark_items(world: Path, manifest: dict, mode: str) -> list[tuple[str, list, list[list[str]]]]:
    """(name, prompt items, options) per toy benchmark, built as the `benchmarks` evaluator builds them."""
    from mixlab.evaluation.tsv import MCQ_KINDS, build_cloze_prompt, build_prompt, decode_image, detect_kind, load_tsv
    from mixlab.evaluation.tsv import options as row_options
    from mixlab.models.predict import PromptItem

    out = []
    for name, entry in sorted(manifest["benchmarks"].items()):
        rows = load_tsv(world / entry["tsv"])
        kind = detect_kind(Path(entry["tsv"]).stem, list(rows[0]), [str(r.get("answer", "")) for r in rows])
        if mode == "text" and kind not in MCQ_KINDS:
            continue
        prompt = build_cloze_prompt if mode == "text" else (lambda r, kind=kind: build_prompt(r, kind))
        items = [PromptItem(prompt(r), decode_image(r["image"], r["index"]) if r.get("image") else None) for r in rows]
        if mode == "text":
            opts = [list(row_options(r).values()) for r in rows]
        else:
            opts = [list(row_options(r)) or ["Yes", "No"] for r in rows]
        out.append((name, items, opts))
    return out


def distinct_images(items: list) -> int:
    return len({hashlib.blake2b(it.image.tobytes()).digest() for it in items if it.image is not None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="toy-world samples for the tokenizer's corpus")
    parser.add_argument("--batch-size", type=int, default=32, help="the evaluator's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of both methods; the fastest is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest timings)")
    parser.add_argument("--modes", default="letters,text", help="comma-separated: letters, text")
    parser.add_argument("--questions", type=int, default=None, help="at most this many per benchmark (default: all)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from mixlab.models.predict import continuation_logprobs
    from mixlab.toyworld import generate

    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = toy_samples(root, args.samples, args.seed)
        _, model, processor = build_model(root, samples, args.seed)
        world = root / "world"
        manifest = generate(world, seed=args.seed, n_train=max(64, args.samples // 4))
        print(
            f"tiny preset model, toy-world benchmarks, batch size {args.batch_size}, torch threads "
            f"{torch.get_num_threads()}; best of {args.repeats} rounds"
        )

        # warm-up outside the timings: imports, first-call kernels, the one-off check against VisionCollator
        first = benchmark_items(world, manifest, "letters")[0]
        pairs = [(it, o) for it, opts in zip(first[1][:8], first[2][:8], strict=True) for o in opts]
        for shared in (False, True):
            continuation_logprobs(model, processor, [p[0] for p in pairs], [p[1] for p in pairs], shared_prefix=shared)

        summary: dict[str, dict] = {}
        all_ok = True
        for mode in modes:
            benches = [
                (name, its[: args.questions], opts[: args.questions])
                for name, its, opts in benchmark_items(world, manifest, mode)
            ]
            items = [it for _, its, _ in benches for it in its]
            options = [o for _, _, opts in benches for o in opts]
            flat_items = [it for it, opts in zip(items, options, strict=True) for _ in opts]
            flat_opts = [o for opts in options for o in opts]

            def score(shared: bool, flat_items=flat_items, flat_opts=flat_opts):
                return continuation_logprobs(
                    model, processor, flat_items, flat_opts, batch_size=args.batch_size, shared_prefix=shared
                )

            best: dict[str, tuple[float, float]] = {}
            results: dict[str, list] = {}
            for _ in range(args.repeats):  # in rotation, so that a burst of load on the machine hits both
                for name, shared in (("reference", False), ("shared", True)):
                    results[name], wall, cpu = timed(lambda shared=shared: score(shared))
                    old = best.get(name, (np.inf, np.inf))
                    best[name] = (min(old[0], wall), min(old[1], cpu))
            ref = np.array([lp for lp, _ in results["reference"]])
            new = np.array([lp for lp, _ in results["shared"]])
            rel = float(np.max(np.abs(new - ref) / np.maximum(np.abs(ref), 1e-12))) if len(ref) else 0.0
            same_greedy = [g for _, g in results["reference"]] == [g for _, g in results["shared"]]
            picks = []
            for label in ("reference", "shared"):
                scores, k, chosen = np.array([lp for lp, _ in results[label]]), 0, []
                for opts in options:
                    chosen.append(int(np.argmax(scores[k : k + len(opts)])))
                    k += len(opts)
                picks.append(chosen)
            same_picks = sum(a == b for a, b in zip(*picks, strict=True))
            ok = rel <= 1e-5 and same_greedy and same_picks == len(options)
            all_ok &= ok
            (rw, rc), (sw, sc) = best["reference"], best["shared"]
            summary[mode] = {
                "ratio": round(rc / sc, 2),
                "ratio_wall": round(rw / sw, 2),
                "questions": len(items),
                "pairs": len(flat_opts),
                "max_rel_diff": rel,
                "same_picks": f"{same_picks}/{len(options)}",
            }
            print(
                f"\n{mode}: {', '.join(name for name, _, _ in benches)}: {len(items)} questions, {len(flat_opts)} "
                f"(question, option) pairs, {distinct_images(items)} distinct images"
            )
            print(f"  {'':<44} {'wall s':>8} {'pairs/s':>9} | {'CPU s':>7} {'pairs/s':>9}")
            for label, (wall, cpu) in (
                ("per-option reference (shared_prefix=False)", best["reference"]),
                ("shared prefix (default)", best["shared"]),
            ):
                print(
                    f"  {label:<44} {wall:8.2f} {len(flat_opts) / wall:9.1f} | {cpu:7.2f} {len(flat_opts) / cpu:9.1f}"
                )
            print(
                f"  ratio {rc / sc:.2f}x CPU, {rw / sw:.2f}x wall; max relative log-likelihood difference {rel:.1e}, "
                f"greedy flags {'equal' if same_greedy else 'DIFFER'}, same picks {same_picks}/{len(options)}"
            )
    head = summary.get("letters") or next(iter(summary.values()))
    line = {
        "bench": "option_scoring",
        "ratio": head["ratio"],
        "identical": bool(all_ok),
        "ratio_wall": head["ratio_wall"],
        "threads": args.threads,
        "batch_size": args.batch_size,
        **{f"{mode}": values for mode, values in summary.items()},
    }
    print(json.dumps(line))
    if not all_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
