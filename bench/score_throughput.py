"""Scoring throughput: the `perplexity` scorer (batched, length-bucketed) against a naive one-at-a-time HF loop.

Same model (the tiny preset built from config, tokenizer trained on the pool) and same toy-world samples for all
runs. The naive loop templates each sample alone with `processor.apply_chat_template(...,
return_assistant_tokens_mask=True)`, runs one forward pass and takes the cross-entropy of the assistant tokens.
Also timed: the same batches in input order (no bucketing), and the scorer again on a warm per-sample cache.
The scores must agree (max |Δ nll| is printed and asserted < 1e-4). Each method runs `--repeats` times in
rotation and its fastest wall and CPU times are reported (CPU time is steadier on a shared machine).

    python bench/score_throughput.py --samples 512 --batch-size 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mixlab.data import Sample


class BenchCtx:
    """The run-context parts a scorer uses: base model, cache folders, progress (silent) and log."""

    def __init__(self, root: Path, base_model: Path):
        self.root, self.base_model = root, base_model

    def cache_dir(self, kind: str, key) -> Path:
        folder = self.root / kind / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextmanager
    def progress(self, description: str, total: int | None):
        yield lambda n=1: None

    def log(self, message: str) -> None:
        pass


def toy_samples(root: Path, n: int, seed: int) -> list[Sample]:
    """n samples drawn (seeded) from every source of a toy world generated under root."""
    from mixlab.records import collect, read_records
    from mixlab.toyworld import generate

    world = root / "world"
    manifest = generate(world, seed=seed, n_train=max(64, n // 4))
    pool: list[Sample] = []
    for name, entry in sorted(manifest["sources"].items()):
        path = world / entry["json"]
        found, _ = collect(read_records(path), path, world / entry["image_root"], "exists", "raise", name)
        pool += found
    if len(pool) < n:
        raise SystemExit(f"the toy world has only {len(pool)} samples; ask for fewer")
    return random.Random(seed).sample(pool, n)


def naive_nll(model, processor, sample: Sample) -> float:
    """One sample, no padding: mean cross-entropy over the chat template's assistant (generation) tokens."""
    import torch
    from PIL import Image

    from mixlab.models.templates import training_template

    messages = []
    for turn in sample["conversations"]:
        text, content = turn["value"], []
        if "<image>" in text:
            content.append({"type": "image", "image": Image.open(sample["image"]).convert("RGB")})
            text = text.replace("<image>", "").strip()
        content.append({"type": "text", "text": text})
        messages.append({"role": "user" if turn["from"] == "human" else "assistant", "content": content})
    enc = dict(
        processor.apply_chat_template(
            messages,
            chat_template=training_template(processor),
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"add_special_tokens": False},
        )
    )
    mask = torch.as_tensor(enc.pop("assistant_masks")).bool()
    labels = torch.where(mask, enc["input_ids"], torch.full_like(enc["input_ids"], -100))
    with torch.inference_mode():
        logits = model(**enc, use_cache=False).logits
    return float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100))


def timed(fn):
    """(result, wall seconds, CPU seconds of this process): CPU time is the steadier figure on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all methods; the fastest is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest timings)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from mixlab.models.base import corpus_of
    from mixlab.models.loading import load_model
    from mixlab.models.predict import answer_nll, length_order
    from mixlab.models.tiny import build_tiny_llava
    from mixlab.plugins.scorers.perplexity import PerplexityScorer
    from mixlab.sections import TinyModel

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = toy_samples(root, args.samples, args.seed)
        model_dir = build_tiny_llava(root / "model", corpus_of(samples), seed=args.seed, **TinyModel().model_dump())
        model, processor = load_model(model_dir)
        n_img = sum(bool(s["image"]) for s in samples)
        order = length_order(processor, samples)
        print(
            f"{len(samples)} toy-world samples ({n_img} with an image), tiny preset model, batch size "
            f"{args.batch_size}, torch threads {torch.get_num_threads()}; the scorer's time includes loading the "
            "model and hashing the checkpoint"
        )

        # warm-up outside the timings: imports (TRL's collator), first-call kernels
        answer_nll(model, processor, samples[:4], batch_size=4)
        naive_nll(model, processor, samples[0])

        scorer = PerplexityScorer(PerplexityScorer.Options(batch_size=args.batch_size), "bench")
        runs = {
            "naive": lambda: np.array([naive_nll(model, processor, s) for s in samples]),
            "unsorted": lambda: answer_nll(model, processor, samples, batch_size=args.batch_size),
        }
        best: dict[str, tuple[float, float]] = {}
        results: dict[str, np.ndarray] = {}
        for r in range(args.repeats):  # in rotation, so that a burst of load on the machine hits every method
            ctx = BenchCtx(root / f"cache{r}", model_dir)  # a cold per-sample cache each round
            runs["scorer"] = lambda ctx=ctx: scorer.score(samples, ctx)["nll"]
            runs["warm"] = lambda ctx=ctx: scorer.score(samples, ctx)["nll"]
            for name, fn in runs.items():
                results[name], wall, cpu = timed(fn)
                old = best.get(name, (np.inf, np.inf))
                best[name] = (min(old[0], wall), min(old[1], cpu))
        naive, unsorted, scored, warm = (results[k] for k in ("naive", "unsorted", "scorer", "warm"))

        def padding(idx: list[int]) -> float:
            from mixlab.data import sample_to_row
            from mixlab.models.collator import VisionCollator

            collator, real, total = VisionCollator(processor), 0, 0
            for i in range(0, len(idx), args.batch_size):
                mask = collator([sample_to_row(samples[j]) for j in idx[i : i + args.batch_size]])["attention_mask"]
                real, total = real + int(mask.sum()), total + mask.numel()
            return 1 - real / total

        diff = float(np.nanmax(np.abs(scored - naive)))
        diff_unsorted = float(np.nanmax(np.abs(unsorted - naive)))
        print(f"max |nll diff| scorer vs naive: {diff:.2e}; batched-unsorted vs naive: {diff_unsorted:.2e}")
        print(f"padding share: input order {padding(list(range(len(samples)))):.1%}, bucketed {padding(order):.1%}")
        n = len(samples)
        t_naive = best["naive"]
        rows = [
            ("naive HF loop, one sample at a time", t_naive),
            (f"answer_nll, batch {args.batch_size}, input order", best["unsorted"]),
            (f"perplexity scorer, batch {args.batch_size}, bucketed (cold cache)", best["scorer"]),
            ("perplexity scorer again (warm per-sample cache)", best["warm"]),
        ]
        print(f"best of {args.repeats} rounds:")
        print(f"  {'':<58} {'wall s':>8} {'samples/s':>10} {'ratio':>6} | {'CPU s':>7} {'samples/s':>10} {'ratio':>6}")
        for label, (wall, cpu) in rows:
            print(
                f"  {label:<58} {wall:8.2f} {n / wall:10.1f} {t_naive[0] / wall:6.2f} | "
                f"{cpu:7.2f} {n / cpu:10.1f} {t_naive[1] / cpu:6.2f}"
            )
        assert diff < 1e-4 and diff_unsorted < 1e-4, "batched scores differ from the naive loop"
        assert np.array_equal(np.isnan(scored), np.isnan(naive)) and np.allclose(warm, scored, equal_nan=True)


if __name__ == "__main__":
    main()
