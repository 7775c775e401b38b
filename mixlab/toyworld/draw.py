"""Drawing primitives on a square RGB canvas: backgrounds, shapes, thick-stroke glyphs and bars."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mixlab.toyworld.vocab import COLORS, LETTER_STROKES

RGB = tuple[int, int, int]


def background(rng: np.random.Generator, size: int, tone: str = "light") -> Image.Image:
    """A plain canvas of a random light (or dark) colour."""
    lo, hi = (190, 256) if tone == "light" else (15, 75)
    return Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(lo, hi, 3)))


def color_rgb(rng: np.random.Generator, name: str, jitter: int = 12) -> RGB:
    """The named colour with a little per-channel jitter, so no two images share exact pixels."""
    base = np.array(COLORS[name]) + rng.integers(-jitter, jitter + 1, 3)
    r, g, b = (int(c) for c in np.clip(base, 0, 255))
    return (r, g, b)


def dark_rgb(rng: np.random.Generator) -> RGB:
    """A random dark ink colour for glyphs."""
    r, g, b = (int(c) for c in rng.integers(0, 90, 3))
    return (r, g, b)


def shape(img: Image.Image, kind: str, cx: float, cy: float, side: float, fill: RGB) -> None:
    """Draw a filled square, circle or triangle of the given side centred at (cx, cy)."""
    d = ImageDraw.Draw(img)
    h = side / 2
    box = (cx - h, cy - h, cx + h, cy + h)
    if kind == "square":
        d.rectangle(box, fill=fill)
    elif kind == "circle":
        d.ellipse(box, fill=fill)
    elif kind == "triangle":
        d.polygon([(cx, cy - h), (cx - h, cy + h), (cx + h, cy + h)], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def glyph(img: Image.Image, letter: str, x0: float, y0: float, box: float, width: int, fill: RGB) -> None:
    """Draw a capital letter as thick strokes inside the square box at (x0, y0)."""
    d = ImageDraw.Draw(img)
    for ax, ay, bx, by in LETTER_STROKES[letter]:
        d.line([(x0 + ax * box, y0 + ay * box), (x0 + bx * box, y0 + by * box)], fill=fill, width=width, joint="curve")


def bar(img: Image.Image, x0: float, width: float, base: float, height: float, fill: RGB) -> None:
    """Draw a vertical bar standing on the line y=base."""
    ImageDraw.Draw(img).rectangle((x0, base - height, x0 + width, base), fill=fill)


def hline(img: Image.Image, y: float, fill: RGB = (40, 40, 40)) -> None:
    """Draw a horizontal axis line across the canvas."""
    ImageDraw.Draw(img).line([(0, y), (img.width, y)], fill=fill, width=1)
