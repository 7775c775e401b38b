"""Scenes with known truth: each maker draws one image (or none) and returns an Item that says what is true."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from mixlab.toyworld import draw
from mixlab.toyworld.rng import one, others, some
from mixlab.toyworld.vocab import (
    ANIMALS,
    COLOR_NAMES,
    COUNTS,
    DIGITS,
    FOODS,
    LETTERS,
    NUMBER_WORDS,
    POSITIONS,
    PROPERTY_PAIRS,
    SHAPE_DECOY,
    SHAPES,
)


@dataclass(frozen=True)
class Item:
    """One question about one scene, with the truth needed to phrase it in any format or to corrupt it.

    question      the stem for short-answer and multiple-choice formats ("What color is the circle?")
    answer        the true answer value ("red")
    alternatives  valid answer values that are wrong here: "No" questions and noisy labels use them
    distractors   wrong multiple-choice options (may hold decoys that are never true, such as "star")
    yes_no        the stem of a yes/no question about a value, with one "{}" ("Is the circle {}?")
    confused      the wrong value a systematically confused annotator gives (noisy sources): the next colour,
                  letter or count, the mirrored position, the second tallest bar
    hint          a context paragraph (science) or None
    image         the picture, or None for a text-only item
    statement     what the picture shows that the question needs, in one sentence ("The circle is red."): the
                  text the tiny language model's reading pretraining puts in place of the picture; never written
                  to a source or benchmark
    """

    category: str
    question: str
    answer: str
    alternatives: tuple[str, ...]
    distractors: tuple[str, ...]
    yes_no: str
    confused: str
    hint: str | None = None
    image: Image.Image | None = None
    statement: str = ""


Maker = Callable[[np.random.Generator, int], Item]


def _next(values: tuple[str, ...], value: str) -> str:
    """The value after ``value`` in ``values`` (cyclic): a confused annotator's consistent mistake."""
    return values[(values.index(value) + 1) % len(values)]


def _single_shape(rng: np.random.Generator, size: int, tone: str = "light") -> tuple[Image.Image, str, str]:
    """A canvas with one large shape (about 50-80% of the side) at a random place."""
    img = draw.background(rng, size, tone)
    kind, color = one(rng, SHAPES), one(rng, COLOR_NAMES)
    side = float(rng.uniform(0.5, 0.81) * size)
    cx, cy = (float(v) for v in rng.uniform(side / 2, size - side / 2, 2))
    draw.shape(img, kind, cx, cy, side, draw.color_rgb(rng, color))
    return img, kind, color


def _describe(color: str, kind: str) -> str:
    """The caption words: "a red circle", "an orange square"."""
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {kind}"


def _caption_of(item: Item) -> str:
    """A short description of any visual scene, in words that are not the asked answer format."""
    a = item.answer
    if item.category == "count":
        return f"{NUMBER_WORDS[a]} {'shape' if a == '1' else 'shapes'} of one colour"
    if item.category == "spatial":
        return f"a shape near the {a} edge"
    if item.category == "ocr":
        return f"the capital letter {a}"
    if item.category == "chart":  # which bar is tallest is left to the chart questions
        return "a bar chart with three bars" if a == item.answer else "a bar chart with two bars"
    raise ValueError(f"no caption for category {item.category!r}")


def caption(rng: np.random.Generator, size: int) -> Item:
    """The alignment data, as LLaVA's pretraining captions: half single shapes ("a red circle"), half other scenes
    (counts, positions, letters, charts) described in a few words."""
    img: Image.Image | None
    if rng.random() < 0.5:
        img, kind, color = _single_shape(rng, size)
        answer = _describe(color, kind)
        wrong = tuple(_describe(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) != (color, kind))
        confused = _describe(_next(COLOR_NAMES, color), kind)
    else:
        scene = (count, spatial, ocr, chart)[int(rng.integers(4))](rng, size)
        img, answer = scene.image, _caption_of(scene)
        wrong = (_caption_of(replace(scene, answer=scene.confused)),)
        confused = wrong[0]
    return Item(
        "caption", "Describe the image briefly.", answer, wrong, wrong, "Is this image showing {}?", confused, image=img
    )


def color(rng: np.random.Generator, size: int) -> Item:
    """Colour: "What color is the circle?" → "red"."""
    img, kind, col = _single_shape(rng, size)
    alts = others(COLOR_NAMES, col)
    confused = _next(COLOR_NAMES, col)
    return Item(
        "color",
        f"What color is the {kind}?",
        col,
        alts,
        _with(confused, some(rng, alts, 3)),
        f"Is the {kind} {{}}?",
        confused,
        image=img,
        statement=f"The {kind} is {col}.",
    )


def _with(value: str, options: list[str]) -> tuple[str, ...]:
    """The options with ``value`` among them (it replaces the last one if missing)."""
    return tuple(options if value in options else [*options[:-1], value])


def shape(rng: np.random.Generator, size: int) -> Item:
    """Shape: "What shape is in the image?" → "circle"."""
    img, kind, _ = _single_shape(rng, size)
    alts = others(SHAPES, kind)
    confused = _next(SHAPES, kind)
    distractors = _with(confused, some(rng, (*alts, SHAPE_DECOY), 3))
    return Item(
        "shape",
        "What shape is in the image?",
        kind,
        alts,
        distractors,
        "Is there a {} in the image?",
        confused,
        image=img,
        statement=f"There is a {kind} in the image.",
    )


def _count_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, int]:
    """1-4 small shapes of one colour, one per quadrant, so they never overlap."""
    img = draw.background(rng, size)
    n = int(rng.integers(1, 5))
    fill = draw.color_rgb(rng, one(rng, COLOR_NAMES))
    half = size / 2
    for cell in rng.choice(4, size=n, replace=False):
        side = float(rng.uniform(0.19, 0.28) * size)
        x0, y0 = (int(cell) % 2) * half, (int(cell) // 2) * half
        cx = x0 + float(rng.uniform(side / 2 + 1, half - side / 2 - 1))
        cy = y0 + float(rng.uniform(side / 2 + 1, half - side / 2 - 1))
        draw.shape(img, one(rng, SHAPES), cx, cy, side, fill)
    return img, n


def _count_statement(n: int) -> str:
    return "There is 1 shape." if n == 1 else f"There are {n} shapes."


def count(rng: np.random.Generator, size: int) -> Item:
    """Counting: "How many shapes are there?" → "3"."""
    img, n = _count_scene(rng, size)
    alts = others(COUNTS, str(n))
    return Item(
        "count",
        "How many shapes are there?",
        str(n),
        alts,
        alts,
        "Is the number of shapes {}?",
        _next(COUNTS, str(n)),
        image=img,
        statement=_count_statement(n),
    )


def calculation(rng: np.random.Generator, size: int) -> Item:
    """Counting plus arithmetic (MME's numerical_calculation): the number of shapes plus one."""
    img, n = _count_scene(rng, size)
    values = ("2", "3", "4", "5")
    alts = others(values, str(n + 1))
    return Item(
        "count",
        "What is the number of shapes plus one?",
        str(n + 1),
        alts,
        alts,
        "Is the number of shapes plus one equal to {}?",
        _next(values, str(n + 1)),
        image=img,
        statement=_count_statement(n),
    )


MIRROR = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def spatial(rng: np.random.Generator, size: int) -> Item:
    """One medium shape near the left, right, top or bottom edge → "left"."""
    img = draw.background(rng, size)
    kind, pos = one(rng, SHAPES), one(rng, POSITIONS)
    side = float(rng.uniform(0.3, 0.4) * size)
    edge = float(rng.uniform(side / 2 + 1, 0.3 * size))
    across = float(rng.uniform(0.4, 0.6) * size)
    cx, cy = {
        "left": (edge, across),
        "right": (size - edge, across),
        "top": (across, edge),
        "bottom": (across, size - edge),
    }[pos]
    draw.shape(img, kind, cx, cy, side, draw.color_rgb(rng, one(rng, COLOR_NAMES)))
    alts = others(POSITIONS, pos)
    return Item(
        "spatial",
        f"Where is the {kind} in the image?",
        pos,
        alts,
        alts,
        f"Is the {kind} on the {{}} of the image?",
        MIRROR[pos],
        image=img,
        statement=f"The {kind} is on the {pos} of the image.",
    )


def ocr(rng: np.random.Generator, size: int) -> Item:
    """One large thick capital letter → "K"."""
    img = draw.background(rng, size)
    letter = one(rng, LETTERS)
    width = max(2, round(0.1 * size))
    box = float(rng.uniform(0.5, 0.7) * size)
    x0, y0 = (float(v) for v in rng.uniform(width, size - box - width, 2))
    draw.glyph(img, letter, x0, y0, box, width, draw.dark_rgb(rng))
    alts = others(LETTERS, letter)
    confused = _next(LETTERS, letter)
    return Item(
        "ocr",
        "What letter is shown in the image?",
        letter,
        alts,
        _with(confused, some(rng, alts, 3)),
        "Is the letter {} shown in the image?",
        confused,
        image=img,
        statement=f"The letter {letter} is shown in the image.",
    )


def chart(rng: np.random.Generator, size: int) -> Item:
    """Three bars of distinct colours and clearly different heights → colour of the tallest."""
    img = draw.background(rng, size)
    colors = some(rng, COLOR_NAMES, 3)
    tallest = float(rng.uniform(0.6, 0.85) * size)
    heights = [tallest, *(float(h) for h in rng.uniform(0.15 * size, tallest - 0.15 * size, 2))]
    order = rng.permutation(3)
    base, slot = 0.92 * size, size / 3
    for i, k in enumerate(order):
        draw.bar(img, i * slot + 0.2 * slot, 0.6 * slot, base, heights[int(k)], draw.color_rgb(rng, colors[int(k)]))
    draw.hline(img, base)
    answer, bars = colors[0], tuple(colors[1:])
    second, third = bars if heights[1] > heights[2] else bars[::-1]
    absent = one(rng, others(COLOR_NAMES, *colors))
    return Item(
        "chart",
        "What color is the tallest bar?",
        answer,
        bars,
        (*bars, absent),
        "Is the {} bar the tallest?",
        second,
        image=img,
        statement=f"The {answer} bar is the tallest, then the {second} bar, then the {third} bar.",
    )


def science(rng: np.random.Generator, size: int) -> Item:
    """Multiple choice whose context holds the answer: a fact with an unrelated image, or a visual property."""
    if rng.random() < 0.6:
        img, _, _ = _single_shape(rng, size)
        animal, food = one(rng, ANIMALS), one(rng, FOODS)
        wrong = tuple(some(rng, others(FOODS, food), int(rng.integers(2, 4))))
        return Item(
            "science",
            f"What does the {animal} eat?",
            food,
            wrong,
            wrong,
            f"Does the {animal} eat {{}}?",
            wrong[0],
            hint=f"The {animal} eats {food}.",
            image=img,
        )
    img = draw.background(rng, size)
    kind, (c1, c2) = one(rng, SHAPES), some(rng, COLOR_NAMES, 2)
    p1, p2 = PROPERTY_PAIRS[int(rng.integers(len(PROPERTY_PAIRS)))]
    if rng.random() < 0.5:
        p1, p2 = p2, p1
    side = float(rng.uniform(0.5, 0.81) * size)
    cx, cy = (float(v) for v in rng.uniform(side / 2, size - side / 2, 2))
    draw.shape(img, kind, cx, cy, side, draw.color_rgb(rng, c1))
    facts = [f"{c1.capitalize()} things are {p1}.", f"{c2.capitalize()} things are {p2}."]
    if rng.random() < 0.5:
        facts.reverse()
    return Item(
        "science",
        f"Is the {kind} {p1} or {p2}?" if rng.random() < 0.5 else f"Is the {kind} {p2} or {p1}?",
        p1,
        (p2,),
        (p2,),
        f"Is the {kind} {{}}?",
        p2,
        hint=" ".join(facts),
        image=img,
        statement=f"The {kind} is {c1}.",
    )


def text(rng: np.random.Generator, size: int) -> Item:
    """Text only: "What number comes after 3?" → "4" (or before)."""
    if rng.random() < 0.5:
        n = int(rng.integers(0, 9))
        q, a, yn = f"What number comes after {n}?", str(n + 1), f"Does {{}} come after {n}?"
    else:
        n = int(rng.integers(1, 10))
        q, a, yn = f"What number comes before {n}?", str(n - 1), f"Does {{}} come before {n}?"
    alts = others(DIGITS, a)
    confused = _next(DIGITS, a)
    return Item("text", q, a, alts, _with(confused, some(rng, alts, 3)), yn, confused)


def brightness(rng: np.random.Generator, size: int) -> Item:
    """Off-task: "Is the background light or dark?" (no benchmark asks this)."""
    tone = one(rng, ("light", "dark"))
    img, _, _ = _single_shape(rng, size, tone)
    other = "dark" if tone == "light" else "light"
    return Item(
        "color",
        "Is the background light or dark?",
        tone,
        (other,),
        (other,),
        "Is the background {}?",
        other,
        image=img,
        statement=f"The background is {tone}.",
    )


MAKERS: dict[str, Maker] = {
    "caption": caption,
    "color": color,
    "shape": shape,
    "count": count,
    "spatial": spatial,
    "ocr": ocr,
    "chart": chart,
    "science": science,
    "text": text,
}


def mixed(categories: tuple[str, ...]) -> Maker:
    """A maker that draws each sample from one of the categories, uniformly (a source that mixes several tasks)."""
    if len(categories) == 1:
        return MAKERS[categories[0]]

    def make(rng: np.random.Generator, size: int) -> Item:
        return MAKERS[categories[int(rng.integers(len(categories)))]](rng, size)

    make.__name__ = "mixed_" + "_".join(categories)
    return make
