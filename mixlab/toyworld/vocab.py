"""The toy world's whole vocabulary: colours, shapes, glyphs, positions and the science words."""

from __future__ import annotations

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 20),
    "purple": (130, 40, 170),
    "orange": (245, 130, 20),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
# Offered as a wrong multiple-choice option only (never drawn), so shape questions can have four options.
SHAPE_DECOY = "star"

COUNTS: tuple[str, ...] = ("1", "2", "3", "4")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))

# Glyph strokes in a unit box (x right, y down): drawn as thick lines, so no font is needed.
LETTER_STROKES: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "A": ((0.0, 1.0, 0.5, 0.0), (0.5, 0.0, 1.0, 1.0), (0.22, 0.6, 0.78, 0.6)),
    "E": ((0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.5, 0.8, 0.5), (0.0, 1.0, 1.0, 1.0)),
    "H": ((0.0, 0.0, 0.0, 1.0), (1.0, 0.0, 1.0, 1.0), (0.0, 0.5, 1.0, 0.5)),
    "K": ((0.0, 0.0, 0.0, 1.0), (1.0, 0.0, 0.0, 0.6), (0.35, 0.4, 1.0, 1.0)),
    "T": ((0.0, 0.0, 1.0, 0.0), (0.5, 0.0, 0.5, 1.0)),
    "X": ((0.0, 0.0, 1.0, 1.0), (1.0, 0.0, 0.0, 1.0)),
}
LETTERS: tuple[str, ...] = tuple(LETTER_STROKES)

# Science: "The cat eats fish." (random pairs, so the answer must be read from the context) ...
ANIMALS: tuple[str, ...] = ("cat", "dog", "cow", "bird", "frog", "bear")
FOODS: tuple[str, ...] = ("fish", "meat", "grass", "seeds", "bugs", "honey")
# ... and "Red things are hot. Blue things are cold." (the image says which colour the shape is).
PROPERTY_PAIRS: tuple[tuple[str, str], ...] = (("hot", "cold"), ("wet", "dry"), ("hard", "soft"), ("loud", "quiet"))

BACKGROUNDS: tuple[str, ...] = ("light", "dark")

NUMBER_WORDS: dict[str, str] = {"1": "one", "2": "two", "3": "three", "4": "four"}
