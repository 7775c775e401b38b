"""Helpers for the model tests: a corpus for the tiny tokenizer and synthetic colour-square samples."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from mixlab.data import Sample
from mixlab.toyworld.vocab import COLORS as COLOURS

NAMES = sorted(COLOURS)
QUESTION = "What color is the square?"
CORPUS = [
    QUESTION,
    " ".join(COLOURS),
    "Are you sure? Yes, it is red.",
    "What shape is in the image? square circle triangle",
    "Describe the picture. There is a small object on a plain background.",
    "How many objects are there? one two three four five",
] * 4


def colour_samples(n: int, root: Path, seed: int, prefix: str = "c") -> list[Sample]:
    """n samples, colours in turn: a coloured square at a random place on a light background; answer = its colour."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    for i in range(n):
        name = NAMES[i % len(NAMES)]
        img = Image.new("RGB", (64, 64), tuple(rng.randint(200, 255) for _ in range(3)))
        size = rng.randint(28, 48)
        x, y = rng.randint(0, 64 - size), rng.randint(0, 64 - size)
        img.paste(COLOURS[name], (x, y, x + size, y + size))
        path = root / f"{prefix}{i}.png"
        img.save(path)
        samples.append(
            Sample(
                id=f"colours/{prefix}{i}",
                source="colours",
                category="color",
                image=str(path),
                conversations=[{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": name}],
                noisy=False,
            )
        )
    return samples


def text_samples(n: int) -> list[Sample]:
    """Text-only samples of different lengths (to mix with image samples in a batch)."""
    return [
        Sample(
            id=f"text/{i}",
            source="text",
            category=None,
            image=None,
            conversations=[
                {"from": "human", "value": "Describe the picture." + " Please." * i},
                {"from": "gpt", "value": "There is a small object" + " on a plain background" * (i % 2)},
            ],
            noisy=None,
        )
        for i in range(n)
    ]


def build_test_model(out_dir: Path, seed: int = 0) -> Path:
    """The tiny LLaVA used by the tests: 64 px images, 16 px patches (16 image tokens), 0.5 M parameters."""
    from mixlab.models.tiny import build_tiny_llava

    return build_tiny_llava(out_dir, CORPUS, seed=seed, patch_size=16, vision_hidden=64)
