"""LLaVA-665K prompt formats (short answer, yes/no, multiple choice, caption) and wrong-label corruption."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixlab.toyworld.rng import one
from mixlab.toyworld.scenes import Item
from mixlab.toyworld.vocab import NUMBER_WORDS

SHORT_SUFFIX = "Answer the question using a single word or phrase."
YES_NO_SUFFIX = "Please answer yes or no."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"
FORMATS = ("short", "yes_no", "mc", "caption")


@dataclass(frozen=True)
class Rendered:
    """A question put in one format: the human turn, the true answer, and the label a noisy source gives."""

    fmt: str
    prompt: str
    answer: str
    noisy: str


def mc_block(question: str, options: list[str]) -> str:
    """The question, lettered options and the MC instruction, one per line (as in LLaVA-665K)."""
    lines = [question, *(f"{LETTERS[i]}. {o}" for i, o in enumerate(options)), MC_SUFFIX]
    return "\n".join(lines)


def yes_no_question(stem: str) -> str:
    """A yes/no question as MME phrases it: the stem, a space, then the instruction."""
    return f"{stem} {YES_NO_SUFFIX}"


def with_context(item: Item, body: str) -> str:
    """Prefix the image token and the context paragraph (if any) to the body."""
    parts = ["<image>"] if item.image is not None else []
    if item.hint:
        parts.append(f"Context: {item.hint}")
    parts.append(body)
    return "\n".join(parts)


def render(item: Item, fmt: str, rng: np.random.Generator) -> Rendered:
    """Phrase the item in one format; random choices (options order, yes or no) come from rng."""
    if fmt == "caption":
        return Rendered(fmt, with_context(item, item.question), item.answer, item.confused)
    if fmt == "short":
        body = f"{item.question}\n{SHORT_SUFFIX}"
        return Rendered(fmt, with_context(item, body), item.answer, item.confused)
    if fmt == "yes_no":
        yes = bool(rng.random() < 0.5)
        value = item.answer if yes else one(rng, item.alternatives)
        body = yes_no_question(item.yes_no.format(value))
        return Rendered(fmt, with_context(item, body), "Yes" if yes else "No", "No" if yes else "Yes")
    if fmt == "mc":
        options = [item.answer, *item.distractors]
        options = [options[int(i)] for i in rng.permutation(len(options))]
        letter = LETTERS[options.index(item.answer)]
        wrong = item.confused if item.confused in options else next(o for o in options if o != item.answer)
        return Rendered(
            fmt, with_context(item, mc_block(item.question, options)), letter, LETTERS[options.index(wrong)]
        )
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def verbose(rendered: Rendered, item: Item) -> str:
    """The true answer in the wrong format: a full sentence where a word, letter or Yes/No is asked for."""
    if rendered.fmt == "yes_no":
        return "Yes, that is right." if rendered.answer == "Yes" else "No, that is not right."
    if rendered.fmt == "mc":
        return f"The answer is {rendered.answer}, {item.answer}."
    if item.category == "count" and item.answer in NUMBER_WORDS:
        noun = "shape" if item.answer == "1" else "shapes"
        return f"I can see {NUMBER_WORDS[item.answer]} {noun} in this picture."
    return f"I think the answer is {item.answer}."
