"""Training throughput: mixlab's train_llava against TRL's default VLM SFT setup, same tiny model and data.

Every run trains the same tiny LLaVA on the same synthetic samples with the same batch size, learning rate, seed and
assistant-only masks. Ratios, each against its named baseline in the same process (runs alternated, medians):

- ``packed / TRL``: `train_llava` with ``packing = true`` against a plain TRL `SFTTrainer` with its default
  `DataCollatorForVisionLanguageModeling` (PIL images in the dataset, padded batches). Both train every weight, the
  vision tower included (equal work; mixlab's default freezes it). The headline ``ratio``.
- ``padded / TRL``: `train_llava` without packing, the same baseline.
- ``cache / no cache``: frozen tower, packing on: ``vision_cache`` with a feature folder that an earlier run filled
  (the next arm or seed of a run) against the same training without the cache. The run that filled it is printed too.
- ``clock / every 25%``: the packed run (checkpoints by the clock: none in a run this short) against the same run
  writing a checkpoint every quarter of its steps (``save_steps``; the default before checkpoints went by the clock).

Tokens/s counts every collated non-padding token (image tokens included) over the Trainer's `train_runtime`; the
bench checks that every run counts the same tokens. ``identical``: the summed loss of each sample in a packed batch
equals its loss alone (atol 1e-5, rel 1e-6), on this bench's model and samples. ``cache_identical``: the cached run's
loss equals the uncached one. Every run uses seed 0, so the same batches, and its training loss is printed.

The data: a colour question on a square, then 0 to 5 follow-up turns, every 8th sample text-only, so that lengths
vary within a batch as in LLaVA's mixtures (``--uniform``: single-turn samples only, the data of this bench's first
version). One torch thread by default (``--threads 0``: torch's default): on the shared 2-core machine two threads per
process contend with the other jobs and timings swing 3× between repeats of the same run. Tokens per CPU-second (this
process's CPU time from the start of training to its last step) are printed beside tokens/s: they move less when other
jobs run. Ends with one JSON line.

    python bench/train_throughput.py
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from mixlab.data import Sample, to_messages
from mixlab.toyworld.vocab import COLORS as COLOURS

QUESTION = "What color is the square?"
FOLLOW_UPS = [
    ("Are you sure?", "Yes, the square is {c}."),
    ("What shape is in the image?", "A square."),
    ("Describe the picture.", "A {c} square on a plain light background; nothing else is in the picture."),
    ("Where is the square?", "It is on a light background, away from the edges of the image."),
    ("How many objects are there?", "One."),
    ("Is the background dark?", "No, the background is light."),
    ("What color is the background?", "A light color, almost white."),
]
TEXT_ONLY = "Name a color."


def make_samples(n: int, root: Path, image_size: int, uniform: bool, seed: int = 0) -> list[Sample]:
    """Coloured squares on light backgrounds; the first answer is the colour, then 0-5 follow-ups (not `uniform`)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(COLOURS)
    samples = []
    for i in range(n):
        name = names[i % len(names)]
        img = Image.new("RGB", (image_size, image_size), tuple(rng.randint(200, 255) for _ in range(3)))
        size = rng.randint(image_size // 2, 3 * image_size // 4)
        x, y = rng.randint(0, image_size - size), rng.randint(0, image_size - size)
        img.paste(COLOURS[name], (x, y, x + size, y + size))
        img.save(root / f"{i}.png")
        turns = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": name}]
        image: str | None = str(root / f"{i}.png")
        if not uniform:
            for q, a in rng.sample(FOLLOW_UPS, rng.randint(0, 5)):
                turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a.format(c=name)}]
            if i % 8 == 7:
                turns, image = [{"from": "human", "value": TEXT_ONLY}, {"from": "gpt", "value": name}], None
        samples.append(
            Sample(id=f"bench/{i}", source="bench", category="color", image=image, conversations=turns, noisy=False)
        )
    return samples


class CpuClock:
    """This process's CPU seconds (every thread) from the start of training to the end of its last step."""

    def __init__(self) -> None:
        self.begin = self.end = 0.0

    def __call__(self, step: int, total: int) -> None:
        if step == 0:
            self.begin = time.process_time()
        self.end = time.process_time()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock(0, state.max_steps)

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                clock(state.global_step, state.max_steps)

        return Clock()

    @property
    def seconds(self) -> float:
        return self.end - self.begin


def run_mixlab(samples: list[Sample], base: Path, out: Path, args: argparse.Namespace, **options: Any) -> dict:
    """`train_llava`; `options` are SFTSettings (packing, vision_lr, vision_cache, ...)."""
    from mixlab.training.sft import SFTSettings, train_llava

    settings = SFTSettings(
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        warmup_ratio=0.0,
        logging_steps=10**6,
        **options,
    )
    clock = CpuClock()
    result = train_llava(samples, base, out, settings, progress=clock)
    tokens = round(result["tokens_per_second"] * result["seconds"])
    return {
        "tps": result["tokens_per_second"],
        "seconds": result["seconds"],
        "tokens": tokens,
        "cpu": clock.seconds,
        **result,
    }


def quarter_of(args: argparse.Namespace) -> int:
    """Steps in a quarter of the training (at least 1): the checkpoint interval of the "every 25%" run."""
    return max(1, math.ceil(args.samples * args.epochs / args.batch_size) // 4)


def run_trl(samples: list[Sample], base: Path, out: Path, args: argparse.Namespace) -> dict:
    """A plain TRL SFTTrainer with its default VLM collator; trains every weight."""
    import datasets
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    model = LlavaForConditionalGeneration.from_pretrained(base, attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(base)
    rows = [
        {"messages": to_messages(s), "images": [Image.open(s["image"]).convert("RGB")] if s["image"] else []}
        for s in samples
    ]
    config = SFTConfig(
        output_dir=str(out),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        seed=0,  # mixlab's default seed: the same shuffle, so the same batches
        assistant_only_loss=True,
        max_length=None,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=args.trl_checkpointing,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
    )
    clock = CpuClock()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=processor,
        callbacks=[clock.callback()],
    )
    result = trainer.train()
    seconds = result.metrics["train_runtime"]
    tokens = trainer._total_train_tokens
    return {
        "tps": tokens / seconds,
        "seconds": seconds,
        "tokens": tokens,
        "cpu": clock.seconds,
        "train_loss": result.training_loss,
    }


def packed_losses_identical(samples: list[Sample], base: Path, n: int = 16) -> tuple[bool, float]:
    """(every sample's summed loss in a packed batch equals its loss alone, the largest difference)."""
    import torch

    from mixlab.data import sample_to_row
    from mixlab.models.collator import IGNORE, VisionCollator
    from mixlab.models.loading import load_model

    model, processor = load_model(base)

    def token_losses(batch: dict) -> Any:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits.float()
        out = torch.zeros(batch["labels"].shape)
        out[:, 1:] = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE, reduction="none"
        )
        return out

    rows = [sample_to_row(s) for s in samples[:n]]
    alone = [float(token_losses(VisionCollator(processor)([row])).sum()) for row in rows]
    collator = VisionCollator(processor, packing=True)
    batch = collator(rows)
    losses = token_losses(batch)
    packed = [0.0] * len(rows)
    for span in collator.last_spans:
        packed[span.sample] = float(losses[span.row, span.start : span.start + span.length].sum())
    diffs = [abs(p - a) for p, a in zip(packed, alone, strict=True)]
    same = all(d <= max(1e-5, 1e-6 * abs(a)) for d, a in zip(diffs, alone, strict=True))
    return same, max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="training samples")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8, help="image tokens per image = (image/patch)^2")
    parser.add_argument("--hidden", type=int, default=128, help="vision and text hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--uniform", action="store_true", help="single-turn samples only (the first version's data)")
    parser.add_argument("--trl-checkpointing", action="store_true", help="TRL run with its default grad checkpointing")
    parser.add_argument("--no-cache-runs", action="store_true", help="leave out the vision-cache comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 = torch's default (one per core)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternated; the median is reported")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    args = parser.parse_args()

    import torch

    from mixlab.models.tiny import build_tiny_llava

    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.keep or Path(tempfile.mkdtemp(prefix="mixlab-bench-"))
    try:
        started = time.perf_counter()
        samples = make_samples(args.samples, work / "images", args.image_size, args.uniform)
        corpus = [QUESTION, TEXT_ONLY, " ".join(COLOURS), *(f"{q} {a}" for q, a in FOLLOW_UPS)] * 4
        base = build_tiny_llava(
            work / "base",
            corpus,
            image_size=args.image_size,
            patch_size=args.patch_size,
            vision_hidden=args.hidden,
            text_hidden=args.hidden,
            layers=args.layers,
        )
        identical, max_diff = packed_losses_identical(samples, base)
        print(f"setup {time.perf_counter() - started:.1f}s: {len(samples)} samples, bs {args.batch_size}")
        print(
            f"per-sample losses, packed vs alone: {'identical' if identical else 'DIFFERENT'} (max diff {max_diff:.1e})"
        )

        trained_lr = {"vision_lr": args.lr}  # TRL trains every weight: the same work
        runners: dict[str, Any] = {
            "trl": lambda out: run_trl(samples, base, out, args),
            "packed": lambda out: run_mixlab(samples, base, out, args, packing=True, **trained_lr),
            "padded": lambda out: run_mixlab(samples, base, out, args, **trained_lr),
            "quarter": lambda out: run_mixlab(
                samples, base, out, args, packing=True, save_steps=quarter_of(args), **trained_lr
            ),
        }
        cache_dir = work / "vision-features"
        if not args.no_cache_runs:
            runners["frozen"] = lambda out: run_mixlab(samples, base, out, args, packing=True)
            runners["cached"] = lambda out: run_mixlab(
                samples, base, out, args, packing=True, vision_cache=True, vision_cache_dir=str(cache_dir)
            )
            filled = run_mixlab(
                samples, base, work / "fill", args, packing=True, vision_cache=True, vision_cache_dir=str(cache_dir)
            )
            print(
                f"cache fill run: {filled['tps']:9.0f} tokens/s, {filled['tokens'] / filled['cpu']:9.0f} tokens/CPU-s "
                f"({filled['seconds']:.1f}s train) {filled['vision_features']}"
            )
        runs: dict[str, list[dict]] = {name: [] for name in runners}
        for r in range(args.repeats):  # alternate, so that warm-up and drift hit every kind alike
            for name, run in runners.items():
                shutil.rmtree(work / name, ignore_errors=True)
                runs[name].append(run(work / name))
                last = runs[name][-1]
                cpu_tps = last["tokens"] / last["cpu"]
                print(
                    f"repeat {r}: {name:6s} {last['tps']:9.0f} tokens/s, {cpu_tps:8.0f} tokens/CPU-s "
                    f"({last['seconds']:.1f}s train, {last['cpu']:.1f} CPU-s)"
                )
        tps = {name: statistics.median(x["tps"] for x in done) for name, done in runs.items()}
        cps = {name: statistics.median(x["tokens"] / x["cpu"] for x in done) for name, done in runs.items()}
        tokens = {name: done[0]["tokens"] for name, done in runs.items()}
        same_tokens = len(set(tokens.values())) == 1
        print(f"tokens per run: {tokens} ({'the same' if same_tokens else 'DIFFERENT'})")
        for name, value in tps.items():
            print(f"{name:6s}: {value:9.0f} tokens/s, {cps[name]:9.0f} tokens/CPU-s (medians of {args.repeats})")
        pairs = {
            "packed / TRL default": ("packed", "trl"),
            "padded / TRL default": ("padded", "trl"),
            "clock / every 25%": ("packed", "quarter"),
        }
        if not args.no_cache_runs:
            pairs["cache / no cache (frozen tower, packed)"] = ("cached", "frozen")
        ratios = {label: tps[a] / tps[b] for label, (a, b) in pairs.items()}
        cpu_ratios = {label: cps[a] / cps[b] for label, (a, b) in pairs.items()}
        losses = {name: round(done[0]["train_loss"], 6) for name, done in runs.items()}
        print(f"train loss of each kind (same seed, so the same batches): {losses}")
        cache_identical = None
        if not args.no_cache_runs:
            loss_diff = abs(runs["cached"][0]["train_loss"] - runs["frozen"][0]["train_loss"])
            cache_identical = loss_diff <= 1e-6
            print(f"train loss, cached vs not: diff {loss_diff:.1e}; features {runs['cached'][0]['vision_features']}")
        for label, value in ratios.items():
            print(f"ratio {label}: {value:.2f} wall, {cpu_ratios[label]:.2f} CPU")
        cache_label = "cache / no cache (frozen tower, packed)"
        summary = {
            "bench": "train_throughput",
            "ratio": round(ratios["packed / TRL default"], 3),
            "identical": identical,
            "cpu_ratio": round(cpu_ratios["packed / TRL default"], 3),
            "padded_ratio": round(ratios["padded / TRL default"], 3),
            "checkpoint_ratio": round(ratios["clock / every 25%"], 3),
            "cache_ratio": round(ratios[cache_label], 3) if cache_label in ratios else None,
            "cache_cpu_ratio": round(cpu_ratios[cache_label], 3) if cache_label in ratios else None,
            "packed_losses_max_diff": max_diff,
            "cache_identical": cache_identical,
            "same_tokens": same_tokens,
            "tokens": tokens["trl"],
            "tokens_per_second": {name: round(value) for name, value in tps.items()},
            "train_loss": losses,
            "samples": args.samples,
            "threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "uniform": args.uniform,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(summary))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
