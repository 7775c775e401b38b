"""Candidate training sources of known quality: clean, label-noisy, duplicated and off-task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.toyworld import scenes
from mixlab.toyworld.formats import render, verbose
from mixlab.toyworld.rng import stream
from mixlab.toyworld.scenes import Maker
from mixlab.toyworld.writer import save_png

MIX = {"short": 0.4, "yes_no": 0.3, "mc": 0.3}
SCIENCE_MIX = {"mc": 0.6, "short": 0.2, "yes_no": 0.2}
CAPTION_MIX = {"caption": 1.0}
DEFAULT_NOISE = 0.6
DUP_UNIQUE = 10


@dataclass(frozen=True)
class SourceSpec:
    """One candidate source: a single category, a quality, and how its samples are made."""

    name: str
    category: str
    quality: str  # "clean" | "noisy" | "duplicate" | "offtask"
    maker: Maker
    description: str
    mix: dict[str, float] = field(default_factory=lambda: dict(MIX))
    noise_rate: float = 0.0
    n_unique: int | None = None  # duplicates: this many unique samples, repeated
    style: str = "plain"  # "verbose": the true answer as a sentence (wrong format)


def _clean(cat: str, mix: dict[str, float] | None = None) -> SourceSpec:
    return SourceSpec(
        f"{cat}_clean",
        cat,
        "clean",
        scenes.MAKERS[cat],
        f"Clean {cat} questions: every label is right.",
        mix or dict(MIX),
    )


def _noisy(cat: str) -> SourceSpec:
    return SourceSpec(
        f"{cat}_noisy",
        cat,
        "noisy",
        scenes.MAKERS[cat],
        f"Label-noisy {cat} questions: a fraction of the answers come from a systematically confused annotator "
        "(the next colour, letter or count, the second tallest bar; yes and no swapped), flagged noisy=True. Harmful.",
        noise_rate=DEFAULT_NOISE,
    )


def _dup(cat: str) -> SourceSpec:
    return SourceSpec(
        f"{cat}_dup",
        cat,
        "duplicate",
        scenes.MAKERS[cat],
        f"Clean {cat} questions, but only {DUP_UNIQUE} unique samples repeated (same image files). Redundant.",
        n_unique=DUP_UNIQUE,
    )


SOURCES: tuple[SourceSpec, ...] = (
    _clean("caption", CAPTION_MIX),
    _clean("color"),
    _clean("shape"),
    _clean("count"),
    _clean("spatial"),
    _clean("ocr"),
    _clean("chart"),
    _clean("science", SCIENCE_MIX),
    _clean("text"),
    _noisy("color"),
    _noisy("count"),
    _noisy("ocr"),
    _noisy("chart"),
    _dup("color"),
    _dup("spatial"),
    SourceSpec(
        "offtask_brightness",
        "color",
        "offtask",
        scenes.brightness,
        "Off-task: asks whether the background is light or dark (often dark, unlike every benchmark); "
        "labels are right but no benchmark asks this.",
    ),
    SourceSpec(
        "offtask_verbose",
        "count",
        "offtask",
        scenes.count,
        "Off-task: counting questions answered with a full sentence instead of the asked format "
        "(a word, a letter, Yes/No); the content is right, the format is wrong.",
        style="verbose",
    ),
)


def _formats(rng: np.random.Generator, mix: dict[str, float], n: int) -> list[str]:
    names = sorted(mix)
    p = np.array([mix[k] for k in names], dtype=float)
    return [names[int(i)] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def build_source(spec: SourceSpec, seed: int, n: int, size: int, images_dir: Path) -> list[dict[str, Any]]:
    """Make the source's LLaVA records and write its images under images_dir/<name>/<i>.png."""
    rng = stream(seed, f"train/{spec.name}")
    n_unique = min(spec.n_unique or n, n)
    uniques = []
    for i, fmt in enumerate(_formats(rng, spec.mix, n_unique)):
        item = spec.maker(rng, size)
        rendered = render(item, fmt, rng)
        image = None
        if item.image is not None:
            image = f"{spec.name}/{i}.png"
            save_png(item.image, images_dir / image)
        answer = verbose(rendered, item) if spec.style == "verbose" else rendered.answer
        uniques.append((item, rendered, image, answer))

    order = rng.permutation(np.arange(n) % n_unique) if n_unique < n else np.arange(n)
    n_noisy = round(spec.noise_rate * n)
    noisy = set(int(i) for i in rng.choice(n, size=n_noisy, replace=False)) if n_noisy else set()

    records = []
    for j, u in enumerate(order):
        item, rendered, image, answer = uniques[int(u)]
        is_noisy = j in noisy
        if is_noisy:
            answer = rendered.noisy
        rec: dict[str, Any] = {"id": f"{spec.name}-{j}"}
        if image is not None:
            rec["image"] = image
        rec["conversations"] = [{"from": "human", "value": rendered.prompt}, {"from": "gpt", "value": answer}]
        rec.update(category=spec.category, source=spec.name, noisy=is_noisy, truth=rendered.answer, format=rendered.fmt)
        records.append(rec)
    return records
