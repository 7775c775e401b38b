"""Training throughput: mixlab's train_llava against TRL's default VLM SFT setup, same tiny model and data.

Both runs train the same tiny LLaVA on the same synthetic colour-square samples with the same batch size, learning
rate and assistant-only masks. The TRL run is a plain `SFTTrainer` with its default
`DataCollatorForVisionLanguageModeling` (PIL images in the dataset); the mixlab run is `train_llava` (image paths
opened by the collator, per-part learning rates, checkpoints). Tokens/s counts every collated non-padding token
(image tokens included), divided by the Trainer's `train_runtime`.

    python bench/train_throughput.py --samples 512 --batch-size 16
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from mixlab.data import Sample, to_messages
from mixlab.toyworld.vocab import COLORS as COLOURS

QUESTION = "What color is the square?"


def make_samples(n: int, root: Path, image_size: int, seed: int = 0) -> list[Sample]:
    """Coloured squares on light backgrounds; the answer is the colour."""
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
        samples.append(
            Sample(
                id=f"bench/{i}",
                source="bench",
                category="color",
                image=str(root / f"{i}.png"),
                conversations=[{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": name}],
                noisy=False,
            )
        )
    return samples


def run_mixlab(samples: list[Sample], base: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    from mixlab.training.sft import SFTSettings, train_llava

    settings = SFTSettings(
        epochs=args.epochs,
        learning_rate=args.lr,
        vision_lr=None if args.freeze_vision else args.lr,  # TRL trains every weight: do the same work by default
        batch_size=args.batch_size,
        warmup_ratio=0.0,
        logging_steps=10**6,
    )
    result = train_llava(samples, base, out, settings, progress=lambda step, total: None)
    return result["tokens_per_second"], result["seconds"]


def run_trl(samples: list[Sample], base: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    import datasets
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTConfig, SFTTrainer

    model = LlavaForConditionalGeneration.from_pretrained(base, attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(base)
    rows = [{"messages": to_messages(s), "images": [Image.open(s["image"]).convert("RGB")]} for s in samples]
    config = SFTConfig(
        output_dir=str(out),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
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
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=datasets.Dataset.from_list(rows), processing_class=processor
    )
    result = trainer.train()
    seconds = result.metrics["train_runtime"]
    return trainer._total_train_tokens / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512, help="training samples")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8, help="image tokens per image = (image/patch)^2")
    parser.add_argument("--hidden", type=int, default=128, help="vision and text hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--trl-checkpointing", action="store_true", help="TRL run with its default grad checkpointing")
    parser.add_argument("--freeze-vision", action="store_true", help="mixlab run with its default frozen vision tower")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternated; the median is reported")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    args = parser.parse_args()

    from mixlab.models.tiny import build_tiny_llava

    work = args.keep or Path(tempfile.mkdtemp(prefix="mixlab-bench-"))
    try:
        started = time.perf_counter()
        samples = make_samples(args.samples, work / "images", args.image_size)
        corpus = [QUESTION, " ".join(COLOURS)] * 4
        base = build_tiny_llava(
            work / "base",
            corpus,
            image_size=args.image_size,
            patch_size=args.patch_size,
            vision_hidden=args.hidden,
            text_hidden=args.hidden,
            layers=args.layers,
        )
        print(f"setup {time.perf_counter() - started:.1f}s: {len(samples)} samples, bs {args.batch_size}")
        trl_runs, mix_runs = [], []
        for r in range(args.repeats):  # alternate the two, so that warm-up and drift hit both alike
            for name, run, runs in (("trl", run_trl, trl_runs), ("mixlab", run_mixlab, mix_runs)):
                shutil.rmtree(work / name, ignore_errors=True)
                runs.append(run(samples, base, work / name, args))
                print(f"repeat {r}: {name:6s} {runs[-1][0]:9.0f} tokens/s ({runs[-1][1]:.1f}s train)")
        trl_tps, mix_tps = statistics.median(t for t, _ in trl_runs), statistics.median(t for t, _ in mix_runs)
        print(f"TRL default SFT   : {trl_tps:9.0f} tokens/s (median of {args.repeats})")
        print(f"mixlab train_llava: {mix_tps:9.0f} tokens/s (median of {args.repeats})")
        print(f"ratio mixlab / TRL: {mix_tps / trl_tps:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
