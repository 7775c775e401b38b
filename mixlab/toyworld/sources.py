"""Training sources of known quality: clean, label-noisy, duplicated and off-task candidates; a small clean
baseline mix covering every category; web-like alignment captions; and an imbalanced pool shaped like LLaVA-665K."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mixlab.toyworld import scenes
from mixlab.toyworld.formats import Rendered, render, verbose
from mixlab.toyworld.rng import stream
from mixlab.toyworld.scenes import Maker
from mixlab.toyworld.writer import save_png

MIX = {"short": 0.4, "yes_no": 0.3, "mc": 0.3}
SCIENCE_MIX = {"mc": 0.6, "short": 0.2, "yes_no": 0.2}
CAPTION_MIX = {"caption": 1.0}
DEFAULT_NOISE = 0.6
DUP_UNIQUE = 10
WEB_NOISE = 0.4
BASE_SIZE = 0.25
# Alt-text boilerplate, as scraped image-text pairs carry it (none of it describes the image).
BOILERPLATE = (
    "click here to enlarge",
    "image may contain one or more things",
    "stock photo royalty free",
    "photo uploaded by user",
    "thumbnail image of the product",
    "view full size",
)


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
    style: str = "plain"  # "verbose": the true answer as a sentence (wrong format); "web": web-like caption noise
    size: float = 1.0  # samples = round(size * n_train)
    near_dup: float = 0.0  # share of samples that re-ask an earlier sample's scene (image re-encoded with pixel noise)


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


def _base(cat: str) -> SourceSpec:
    return replace(
        _clean(cat, SCIENCE_MIX if cat == "science" else None),
        name=f"{cat}_base",
        description=f"A little clean {cat} data ({BASE_SIZE:g} of n_train): one part of the baseline mix that already "
        "covers every category (the role LLaVA-665K plays in Individual Select).",
        size=BASE_SIZE,
    )


def _pool(name: str, cats: tuple[str, ...], size: float, near_dup: float, role: str) -> SourceSpec:
    return SourceSpec(
        f"pool_{name}",
        cats[0] if len(cats) == 1 else "general",
        "clean",
        scenes.mixed(cats),
        f"Imbalanced instruction pool, {size:g} × n_train samples of {', '.join(cats)}"
        + (f", {near_dup:.0%} near-duplicates (a scene asked again)" if near_dup else "")
        + f"; plays the role of {role} in LLaVA-665K.",
        SCIENCE_MIX if cats == ("science",) else dict(MIX),
        size=size,
        near_dup=near_dup,
    )


CATEGORY_SOURCES = ("color", "shape", "count", "spatial", "ocr", "chart", "science", "text")

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
    *(_base(cat) for cat in CATEGORY_SOURCES),
    SourceSpec(
        "caption_web",
        "caption",
        "noisy",
        scenes.caption,
        f"Alignment captions as scraped from the web: {WEB_NOISE:.0%} of them (flagged noisy=True, kind in "
        "`noise`) are the caption of another image, alt-text cut after a word or two, or boilerplate; "
        "2 × n_train samples.",
        dict(CAPTION_MIX),
        noise_rate=WEB_NOISE,
        style="web",
        size=2.0,
    ),
    _pool("vqa", ("color", "shape", "spatial"), 3.0, 0.5, "VQAv2, GQA and Visual Genome"),
    _pool("ocr", ("ocr",), 2.0, 0.5, "OCR-VQA and TextCaps"),
    _pool("count", ("count",), 1.0, 0.25, "RefCOCO (grounding, counting)"),
    _pool("text", ("text",), 0.5, 0.0, "ShareGPT (text only)"),
    _pool("chart", ("chart",), 0.25, 0.0, "the rare reasoning sets"),
    _pool("science", ("science",), 0.25, 0.0, "OKVQA (knowledge)"),
)


def _formats(rng: np.random.Generator, mix: dict[str, float], n: int) -> list[str]:
    names = sorted(mix)
    p = np.array([mix[k] for k in names], dtype=float)
    return [names[int(i)] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def build_source(spec: SourceSpec, seed: int, n_train: int, size: int, images_dir: Path) -> list[dict[str, Any]]:
    """Make the source's LLaVA records and write its images under images_dir/<name>/<i>.png."""
    rng = stream(seed, f"train/{spec.name}")
    n = max(1, round(spec.size * n_train))
    n_unique = min(spec.n_unique or n, n)
    uniques: list[tuple[scenes.Item, Rendered, str | None, str]] = []
    for i, fmt in enumerate(_formats(rng, spec.mix, n_unique)):
        if spec.near_dup and uniques and rng.random() < spec.near_dup:  # a scene asked again, its image re-noised
            item = uniques[int(rng.integers(len(uniques)))][0]
            item = replace(item, image=_jitter(item.image, rng))
        else:
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
        noise = None
        if is_noisy and spec.style == "web":
            noise, answer = _web_noise(rendered.answer, [x[1].answer for x in uniques], rng)
        elif is_noisy:
            answer = rendered.noisy
        rec: dict[str, Any] = {"id": f"{spec.name}-{j}"}
        if image is not None:
            rec["image"] = image
        rec["conversations"] = [{"from": "human", "value": rendered.prompt}, {"from": "gpt", "value": answer}]
        rec.update(category=item.category, source=spec.name, noisy=is_noisy, truth=rendered.answer, format=rendered.fmt)
        if noise:
            rec["noise"] = noise
        records.append(rec)
    return records


def _jitter(image: Image.Image | None, rng: np.random.Generator) -> Image.Image | None:
    """The image with light pixel noise (±4 per channel): a near-duplicate, not a byte-identical copy."""
    if image is None:
        return None
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-4, 5, size=np.asarray(image).shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _web_noise(caption: str, captions: list[str], rng: np.random.Generator) -> tuple[str, str]:
    """One web-like corruption of a caption: (kind, text). Kinds: another image's caption, alt-text cut after a word
    or two, boilerplate."""
    kind = ("mismatched", "truncated", "boilerplate")[int(rng.integers(3))]
    if kind == "mismatched":
        others = [c for c in captions if c != caption]
        if others:
            return kind, others[int(rng.integers(len(others)))]
        kind = "boilerplate"
    words = caption.split()
    if kind == "truncated" and len(words) > 1:
        return kind, " ".join(words[: int(rng.integers(1, min(3, len(words))))])
    return "boilerplate", BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
