"""Scoring throughput: the `perplexity` and `activations` scorers (batched, length-bucketed) against naive
one-at-a-time HF loops.

Same model (the tiny preset built from config, tokenizer trained on the pool) and same toy-world samples for all
runs. The naive loops template each sample alone with `processor.apply_chat_template(...,
return_assistant_tokens_mask=True)` and run one forward pass: the cross-entropy of the assistant tokens, or the
COINCIDE pooling of the chosen layers' o_proj outputs (in numpy). Also timed: the same batches in input order (no
bucketing), the scorer again on a warm per-sample cache, the scorer with one batch at a time (its default runs two at
once on a CPU with two or more torch threads), and the plain forward passes: the full model over the scorer's
batches, one at a time, collated beforehand (the perplexity scorer runs the last layer's position-wise parts only
where an answer token is predicted, and two batches at once, so it can come under it). The scores must agree (max
|Δ nll| < 1e-4, max |Δ embedding| < 1e-5). Each method runs `--repeats` times in rotation and its fastest wall and
CPU times are reported (CPU time is steadier on a shared machine; the JSON ratios are CPU-time ones, except
`ratio_wall` and `ratio_wall_rounds`, the perplexity scorer against the naive loop round by round, each pair timed
within seconds of each other). The last line is one JSON object. By default: 512 samples, the scorers' default
batch size, torch's default threads (every core); the recorded full-size figure:

    python bench/score_throughput.py --samples 2048 --repeats 3
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


def build_model(root: Path, samples: list[Sample], seed: int):
    """(model dir, model, processor) of the tiny preset (random-init vision tower), tokenizer trained on the samples'
    text."""
    import inspect

    from mixlab.models.base import corpus_of
    from mixlab.models.loading import load_model
    from mixlab.models.tiny import build_tiny_llava
    from mixlab.sections import TinyModel

    accepted = inspect.signature(build_tiny_llava).parameters
    shape = {k: v for k, v in TinyModel().model_dump().items() if k in accepted}
    model_dir = build_tiny_llava(root / "model", corpus_of(samples), seed=seed, **shape)
    return (model_dir, *load_model(model_dir))


def chat(sample: Sample) -> list[dict]:
    """The sample as typed chat messages with its PIL image inlined (the naive loops' own rendering)."""
    from PIL import Image

    messages = []
    for turn in sample["conversations"]:
        text, content = turn["value"], []
        if "<image>" in text:
            content.append({"type": "image", "image": Image.open(sample["image"]).convert("RGB")})
            text = text.replace("<image>", "").strip()
        content.append({"type": "text", "text": text})
        messages.append({"role": "user" if turn["from"] == "human" else "assistant", "content": content})
    return messages


def encode(processor, sample: Sample) -> dict:
    from mixlab.models.templates import training_template

    return dict(
        processor.apply_chat_template(
            chat(sample),
            chat_template=training_template(processor),
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"add_special_tokens": False},
        )
    )


def naive_nll(model, processor, sample: Sample) -> float:
    """One sample, no padding: mean cross-entropy over the chat template's assistant (generation) tokens."""
    import torch

    enc = encode(processor, sample)
    mask = torch.as_tensor(enc.pop("assistant_masks")).bool()
    labels = torch.where(mask, enc["input_ids"], torch.full_like(enc["input_ids"], -100))
    with torch.inference_mode():
        logits = model(**enc, use_cache=False).logits
    return float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100))


def naive_embedding(model, processor, sample: Sample, layers: list[int]) -> np.ndarray:
    """One sample: o_proj outputs of the chosen layers over a full forward pass, pooled in numpy (COINCIDE)."""
    import torch

    enc = encode(processor, sample)
    enc.pop("assistant_masks")
    outputs = {}
    blocks = model.model.language_model.layers
    handles = [
        blocks[i].self_attn.o_proj.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0].numpy()))
        for i in layers
    ]
    with torch.inference_mode():
        model(**enc, use_cache=False)
    for h in handles:
        h.remove()
    is_image = (enc["input_ids"][0] == model.config.image_token_id).numpy()
    parts = []
    for i in layers:
        for span in (is_image, ~is_image):
            if span.any():
                v = np.tanh(outputs[i][span].mean(0))
                parts.append(v / np.linalg.norm(v))
            else:  # no image: the "zero_image" rule
                parts.append(np.zeros(outputs[i].shape[-1], dtype=np.float32))
        if not is_image.any():
            parts[-1] = parts[-1] * np.sqrt(2.0)
    return np.concatenate(parts) / np.sqrt(2 * len(layers))


def timed(fn):
    """(result, wall seconds, CPU seconds of this process): CPU time is the steadier figure on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the scorers' own default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all methods; the fastest is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, every core)")
    args = parser.parse_args()

    import torch

    from mixlab.models.scorer import ModelScorerOptions

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or ModelScorerOptions().batch_size

    from mixlab.data import sample_to_row
    from mixlab.models.collator import VisionCollator
    from mixlab.models.layers import default_layers
    from mixlab.models.sample_scores import answer_nll, length_order
    from mixlab.plugins.scorers.activations import ActivationsScorer
    from mixlab.plugins.scorers.perplexity import PerplexityScorer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = toy_samples(root, args.samples, args.seed)
        model_dir, model, processor = build_model(root, samples, args.seed)
        n_img = sum(bool(s["image"]) for s in samples)
        order = length_order(processor, samples)
        layers = default_layers(model.config.get_text_config().num_hidden_layers)
        print(
            f"{len(samples)} toy-world samples ({n_img} with an image), tiny preset model, batch size "
            f"{args.batch_size}, torch threads {torch.get_num_threads()}; the scorers' times include loading the "
            f"model and hashing the checkpoint; activations of layers {layers}"
        )

        # warm-up outside the timings: imports (TRL's collator), first-call kernels
        answer_nll(model, processor, samples[:4], batch_size=4)
        naive_nll(model, processor, samples[0])
        naive_embedding(model, processor, samples[0], layers)

        # the plain forward passes: the full model over the scorer's bucketed batches, collated beforehand
        collator = VisionCollator(processor)
        batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        collated = [dict(collator([sample_to_row(samples[j]) for j in b])) for b in batches]
        for batch in collated:
            batch.pop("labels")

        def forward_only() -> None:
            with torch.inference_mode():
                for batch in collated:
                    model(**batch, use_cache=False)

        perplexity = PerplexityScorer(PerplexityScorer.Options(batch_size=args.batch_size), "bench")
        serial = PerplexityScorer(PerplexityScorer.Options(batch_size=args.batch_size, batches_at_once=1), "bench")
        activations = ActivationsScorer(ActivationsScorer.Options(batch_size=args.batch_size), "bench")
        runs = {
            "naive": lambda: np.array([naive_nll(model, processor, s) for s in samples]),
            "unsorted": lambda: answer_nll(model, processor, samples, batch_size=args.batch_size),
            "forward": forward_only,
            "naive_act": lambda: np.stack([naive_embedding(model, processor, s, layers) for s in samples]),
        }
        best: dict[str, tuple[float, float]] = {}
        walls: dict[str, list[float]] = {name: [] for name in (*runs, "scorer", "serial", "warm", "act")}
        results: dict[str, np.ndarray] = {}
        for r in range(args.repeats):  # in rotation, so that a burst of load on the machine hits every method
            ctx = BenchCtx(root / f"cache{r}", model_dir)  # a cold per-sample cache each round
            runs["scorer"] = lambda ctx=ctx: perplexity.score(samples, ctx)["nll"]
            runs["serial"] = lambda r=r: serial.score(samples, BenchCtx(root / f"serial{r}", model_dir))["nll"]
            runs["warm"] = lambda ctx=ctx: perplexity.score(samples, ctx)["nll"]
            runs["act"] = lambda ctx=ctx: activations.score(samples, ctx)["embedding"]
            for name, fn in runs.items():
                results[name], wall, cpu = timed(fn)
                walls[name].append(wall)
                old = best.get(name, (np.inf, np.inf))
                best[name] = (min(old[0], wall), min(old[1], cpu))
        naive, unsorted, scored, warm = (results[k] for k in ("naive", "unsorted", "scorer", "warm"))

        def padding(idx: list[int]) -> float:
            real, total = 0, 0
            for i in range(0, len(idx), args.batch_size):
                mask = collator([sample_to_row(samples[j]) for j in idx[i : i + args.batch_size]])["attention_mask"]
                real, total = real + int(mask.sum()), total + mask.numel()
            return 1 - real / total

        diff = float(np.nanmax(np.abs(scored - naive)))
        diff_unsorted = float(np.nanmax(np.abs(unsorted - naive)))
        diff_act = float(np.max(np.abs(results["act"] - results["naive_act"])))
        print(
            f"max |nll diff| scorer vs naive: {diff:.2e}; batched-unsorted vs naive: {diff_unsorted:.2e}; "
            f"max |embedding diff| activations scorer vs naive: {diff_act:.2e}"
        )
        print(f"padding share: input order {padding(list(range(len(samples)))):.1%}, bucketed {padding(order):.1%}")
        n = len(samples)
        rows = [
            ("naive HF loop, one sample at a time (nll)", "naive", "naive"),
            (f"answer_nll, batch {args.batch_size}, input order", "unsorted", "naive"),
            (f"perplexity scorer, batch {args.batch_size}, bucketed (cold cache)", "scorer", "naive"),
            ("perplexity scorer, one batch at a time (batches_at_once = 1)", "serial", "naive"),
            ("perplexity scorer again (warm per-sample cache)", "warm", "naive"),
            ("plain forward passes (full model), same batches, pre-collated", "forward", "naive"),
            ("naive HF loop, one sample at a time (activations)", "naive_act", "naive_act"),
            (f"activations scorer, batch {args.batch_size}, bucketed (cold cache)", "act", "naive_act"),
        ]
        print(f"best of {args.repeats} rounds (ratio: against the naive loop of the same kind):")
        print(f"  {'':<58} {'wall s':>8} {'samples/s':>10} {'ratio':>6} | {'CPU s':>7} {'samples/s':>10} {'ratio':>6}")
        for label, name, base in rows:
            (wall, cpu), (base_wall, base_cpu) = best[name], best[base]
            print(
                f"  {label:<58} {wall:8.2f} {n / wall:10.1f} {base_wall / wall:6.2f} | "
                f"{cpu:7.2f} {n / cpu:10.1f} {base_cpu / cpu:6.2f}"
            )
        # the same round's naive loop and scorer ran within seconds of each other: their ratio, round by round
        paired = sorted(a / b for a, b in zip(walls["naive"], walls["scorer"], strict=True))
        print(
            f"scorer × naive loop, wall, round by round: median {np.median(paired):.2f} "
            f"(range {paired[0]:.2f}-{paired[-1]:.2f} over {len(paired)} rounds)"
        )
        identical = (
            diff < 1e-4
            and diff_unsorted < 1e-4
            and diff_act < 1e-5
            and bool(np.array_equal(np.isnan(scored), np.isnan(naive)))
            and bool(np.allclose(warm, scored, equal_nan=True))
            and bool(np.allclose(results["serial"], scored, rtol=1e-6, atol=1e-6, equal_nan=True))
        )
        ratio = {name: round(best["naive"][1] / best[name][1], 2) for name in ("scorer", "forward")}
        line = {
            "bench": "score_throughput",
            "ratio": ratio["scorer"],
            "identical": identical,
            "ratio_wall": round(best["naive"][0] / best["scorer"][0], 2),
            "ratio_wall_rounds": [round(r, 2) for r in paired],
            "at_once_speedup_wall": round(best["serial"][0] / best["scorer"][0], 2),
            "forward_only": ratio["forward"],
            "activations_ratio": round(best["naive_act"][1] / best["act"][1], 2),
            "max_nll_diff": diff,
            "max_embedding_diff": diff_act,
            "samples": n,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
        }
    print(json.dumps(line))
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
