"""Turn free-text model outputs into answers, following VLMEvalKit's exact-matching rules.

Rules restated (not copied) from VLMEvalKit ``vlmeval/dataset/utils/yorn.py`` (``YOrN_Extraction``),
``vlmeval/smp/misc.py`` (``process_punctuation``) and ``vlmeval/utils/matching_util.py``
(``can_infer_option``, ``can_infer_text``, ``can_infer``) at commit e8e78f05.

``extraction = "vlmevalkit"`` (the default) reproduces those rules exactly, quirks included; ``"extended"`` is
mixlab's more lenient reading, for diagnosis only (see docs/evaluators.md, "Deviations from VLMEvalKit").
"""

from __future__ import annotations

import re
from typing import Literal

from mixlab.errors import UserError

Extraction = Literal["vlmevalkit", "extended"]
EXTRACTIONS: tuple[str, ...] = ("vlmevalkit", "extended")

_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_DIGIT_COMMA = re.compile(r"\d,\d")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
# VLMEvalKit hands re.UNICODE (32) to Pattern.sub as its `count`: only the first 32 lone periods are removed.
_PERIOD_LIMIT = 32
_OPTION_SEPARATORS = ".()[],:;!*#{}"
_API_FAILURE = "Failed to obtain answer via API"  # no letter read; the option-text fallback still runs
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# VLMEvalKit: "(correct) answer is X", case-insensitive throughout (the letter too), X one of A-D, "*" around it
# allowed, nothing required after it ("The answer is blue" reads as B).
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
# extended: also "Answer: X" and "(X)", any letter, which must be upper case and stand alone.
_ANSWER_IS_EXTENDED = re.compile(r"(?i:(?:correct\s+)?answer\s*(?:is|:))\s*\**\(?([A-Z])\)?\**(?![A-Za-z])")
_LAST_TOKENS = 4  # the letter must be among the last four tokens (VLMEvalKit: index > len - 5)


def check_extraction(extraction: str) -> None:
    """Refuse an unknown extraction mode."""
    if extraction not in EXTRACTIONS:
        raise UserError(f"unknown extraction {extraction!r}; expected one of {', '.join(EXTRACTIONS)}.")


def strip_punctuation(text: str, extraction: Extraction = "vlmevalkit") -> str:
    """VQA-style punctuation removal: glued marks become spaces, spaced ones go, lone periods go.

    With ``extraction="vlmevalkit"`` only the first 32 lone periods go, as in VLMEvalKit.
    """
    drop_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _PUNCT:
        spaced = f"{p} " in text or f" {p}" in text
        out = out.replace(p, "" if spaced or drop_all else " ")
    return _LONE_PERIOD.sub("", out, count=_PERIOD_LIMIT if extraction == "vlmevalkit" else 0)


def extract_yes_no(prediction: str, extraction: Extraction = "vlmevalkit") -> str:
    """Yes if the word yes occurs and no does not, No in the reverse case, else Unknown."""
    words = strip_punctuation(str(prediction).lower(), extraction).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "Yes"
    if has_no and not has_yes:
        return "No"
    return "Unknown"


def extract_option(prediction: str, options: dict[str, str], extraction: Extraction = "vlmevalkit") -> str | None:
    """The option letter a prediction names, or None when it cannot be inferred."""
    prediction = str(prediction)
    letter, give_up = _infer_letter(prediction, options, extraction)
    if letter or give_up:
        return letter
    return _infer_from_text(prediction, options)


def _infer_letter(prediction: str, options: dict[str, str], extraction: Extraction) -> tuple[str | None, bool]:
    """(letter, give_up): the one option letter among the last tokens, else an "answer is X" phrase.

    ``give_up`` is True for refusals and a bare "Z" (VLMEvalKit's "no option"), which stop
    the search before the option-text fallback.
    """
    if _API_FAILURE in prediction:
        return None, False
    if any(refusal in prediction for refusal in _REFUSALS):
        return None, True
    tokens = _tokens(prediction)
    present = [letter for letter in options if letter in tokens]
    if len(present) == 1 and tokens.index(present[0]) >= len(tokens) - _LAST_TOKENS:
        return present[0], False
    if not present and "Z" in tokens:
        return None, True
    return _answer_is(prediction, options, extraction), False


def _answer_is(prediction: str, options: dict[str, str], extraction: Extraction) -> str | None:
    """The option letter named by an "answer is X" phrase (the mode's pattern), else None."""
    pattern = _ANSWER_IS_EXTENDED if extraction == "extended" else _ANSWER_IS
    match = pattern.search(prediction)
    if not match:
        return None
    letter = match.group(1) if extraction == "extended" else match.group(1).upper()
    return letter if letter in options else None


def _tokens(prediction: str) -> list[str]:
    """Whitespace tokens after turning option separators such as ".():" into spaces."""
    table = str.maketrans(_OPTION_SEPARATORS, " " * len(_OPTION_SEPARATORS))
    return prediction.translate(table).split()


def _infer_from_text(prediction: str, options: dict[str, str]) -> str | None:
    """The one option whose text occurs in a short prediction (case-insensitive), else None."""
    answer = prediction.lower()
    if len(answer) > 2 * sum(len(text) for text in options.values()):
        return None
    hits = [letter for letter, text in options.items() if text.lower() in answer]
    return hits[0] if len(hits) == 1 else None
