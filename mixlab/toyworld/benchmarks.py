"""Held-out benchmarks in VLMEvalKit's TSV layouts: MME (yes/no pairs), MMBench (circular), SEED, ScienceQA."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixlab.toyworld import scenes
from mixlab.toyworld.formats import LETTERS, yes_no_question
from mixlab.toyworld.rng import one, stream
from mixlab.toyworld.scenes import Item, Maker
from mixlab.toyworld.writer import png_b64

CIRCULAR_OFFSET = 1_000_000
MME_COLUMNS = ["index", "image", "question", "answer", "category", "image_path"]
MMBENCH_COLUMNS = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "image",
    "l2-category",
    "split",
]
SEED_COLUMNS = ["index", "question", "A", "B", "C", "D", "answer", "category", "image"]
SCIENCEQA_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]

# benchmark category → (maker, toy category it tests)
MME_SUBTASKS: dict[str, tuple[Maker, str]] = {
    "existence": (scenes.shape, "shape"),
    "count": (scenes.count, "count"),
    "position": (scenes.spatial, "spatial"),
    "color": (scenes.color, "color"),
    "OCR": (scenes.ocr, "ocr"),
    "numerical_calculation": (scenes.calculation, "count"),
}
MMBENCH_CATEGORIES: dict[str, tuple[Maker, str, str]] = {  # category → (maker, toy category, l2-category)
    "attribute_recognition": (scenes.color, "color", "Fine-grained Perception (instance-level)"),
    "object_recognition": (scenes.shape, "shape", "Coarse Perception"),
    "object_counting": (scenes.count, "count", "Fine-grained Perception (instance-level)"),
    "object_localization": (scenes.spatial, "spatial", "Fine-grained Perception (instance-level)"),
    "ocr": (scenes.ocr, "ocr", "Fine-grained Perception (cross-instance)"),
    "chart_reasoning": (scenes.chart, "chart", "Logic Reasoning"),
}
SEED_CATEGORIES: dict[str, tuple[Maker, str]] = {
    "Instance Attributes": (scenes.color, "color"),
    "Instance Identity": (scenes.shape, "shape"),
    "Instances Counting": (scenes.count, "count"),
    "Instance Location": (scenes.spatial, "spatial"),
    "Text Understanding": (scenes.ocr, "ocr"),
    "Visual Reasoning": (scenes.chart, "chart"),
}


@dataclass(frozen=True)
class Benchmark:
    """A built benchmark: its rows in column order, its kind, and what each category tests."""

    name: str
    kind: str
    columns: list[str]
    rows: list[dict[str, Any]]
    categories: dict[str, str]
    n_questions: int


def _options(item: Item, rng: np.random.Generator) -> tuple[list[str], str]:
    options = [item.answer, *item.distractors]
    options = [options[int(i)] for i in rng.permutation(len(options))]
    return options, LETTERS[options.index(item.answer)]


def _mc_row(index: int, item: Item, options: list[str], letter: str) -> dict[str, Any]:
    row: dict[str, Any] = {"index": index, "question": item.question, "hint": item.hint or "", "answer": letter}
    row.update({LETTERS[i]: options[i] if i < len(options) else "" for i in range(4)})
    return row


def _png(item: Item) -> str:
    """The item's picture as a base64 PNG (every benchmark question has one)."""
    assert item.image is not None, f"benchmark item without an image: {item.question!r}"
    return png_b64(item.image)


def _items(seed: int, bench: str, cat: str, maker: Maker, n: int, size: int) -> tuple[np.random.Generator, list[Item]]:
    rng = stream(seed, f"bench/{bench}/{cat}")
    return rng, [maker(rng, size) for _ in range(n)]


def mme(seed: int, n_bench: int, size: int) -> Benchmark:
    """Two questions per image, the first answered Yes and the second No, sharing image_path."""
    rows: list[dict[str, Any]] = []
    n_images = max(1, n_bench // 2)
    for cat, (maker, _) in MME_SUBTASKS.items():
        rng, items = _items(seed, "MME_toy", cat, maker, n_images, size)
        for i, item in enumerate(items):
            b64, path = _png(item), f"{cat}/{i}.png"
            for value, answer in ((item.answer, "Yes"), (one(rng, item.alternatives), "No")):
                rows.append(
                    {
                        "index": len(rows),
                        "image": b64,
                        "question": yes_no_question(item.yes_no.format(value)),
                        "answer": answer,
                        "category": cat,
                        "image_path": path,
                    }
                )
    cats = {k: v[1] for k, v in MME_SUBTASKS.items()}
    return Benchmark("MME_toy", "mme", MME_COLUMNS, rows, cats, len(rows))


def mmbench(seed: int, n_bench: int, size: int) -> Benchmark:
    """Four-option questions, each also at index g + k*1e6 (k=1..3) with the options rotated by k."""
    originals: list[tuple[Item, list[str], str, str]] = []
    n_per = max(1, n_bench // 4)
    for cat, (maker, _, _) in MMBENCH_CATEGORIES.items():
        rng, items = _items(seed, "MMBench_toy", cat, maker, n_per, size)
        originals += [(item, *_options(item, rng), cat) for item in items]
    images = [_png(item) for item, *_ in originals]
    rows = []
    for k in range(4):
        for g, (item, options, _, cat) in enumerate(originals):
            rotated = options[k:] + options[:k]
            row = _mc_row(g + k * CIRCULAR_OFFSET, item, rotated, LETTERS[rotated.index(item.answer)])
            row.update(category=cat, image=images[g], split="dev")
            row["l2-category"] = MMBENCH_CATEGORIES[cat][2]
            rows.append(row)
    cats = {k: v[1] for k, v in MMBENCH_CATEGORIES.items()}
    return Benchmark("MMBench_toy", "mmbench", MMBENCH_COLUMNS, rows, cats, len(originals))


def _single_pass(
    name: str, kind: str, columns: list[str], plan: dict[str, tuple[Maker, str]], n: int, seed: int, size: int
) -> Benchmark:
    rows: list[dict[str, Any]] = []
    for cat, (maker, _) in plan.items():
        rng, items = _items(seed, name, cat, maker, n, size)
        for item in items:
            row = _mc_row(len(rows), item, *_options(item, rng))
            row.update(category=cat, image=_png(item))
            rows.append(row)
    return Benchmark(name, kind, columns, rows, {k: v[1] for k, v in plan.items()}, len(rows))


def seed_bench(seed: int, n_bench: int, size: int) -> Benchmark:
    """Four-option questions, single pass, SEED-Bench-like category names."""
    return _single_pass("SEED_toy", "seed", SEED_COLUMNS, SEED_CATEGORIES, n_bench, seed, size)


def _science_kind(want_fact: bool) -> Maker:
    """The science maker, redrawn until it yields the wanted kind (context fact or visual property)."""

    def make(rng: np.random.Generator, size: int) -> Item:
        while True:
            item = scenes.science(rng, size)
            if item.question.startswith("What does") == want_fact:
                return item

    return make


SCIENCEQA_CATEGORIES: dict[str, tuple[Maker, str]] = {
    "fact_recall": (_science_kind(True), "science"),
    "visual_property": (_science_kind(False), "science"),
}


def scienceqa(seed: int, n_bench: int, size: int) -> Benchmark:
    """Two to four options with the context in "hint"; unused option columns are empty."""
    return _single_pass("ScienceQA_toy", "scienceqa", SCIENCEQA_COLUMNS, SCIENCEQA_CATEGORIES, n_bench, seed, size)


BUILDERS: tuple[Callable[[int, int, int], Benchmark], ...] = (mme, mmbench, seed_bench, scienceqa)
CATEGORIES: dict[str, set[str]] = {
    "MME_toy": set(MME_SUBTASKS),
    "MMBench_toy": set(MMBENCH_CATEGORIES),
    "SEED_toy": set(SEED_CATEGORIES),
    "ScienceQA_toy": set(SCIENCEQA_CATEGORIES),
}
"""Each toy benchmark's item categories, as its builder writes them."""
