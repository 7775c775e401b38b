"""Turn free-text model outputs into answers, following VLMEvalKit's exact-matching rules.

Rules restated (not copied) from VLMEvalKit ``vlmeval/dataset/utils/yorn.py`` (``YOrN_Extraction``),
``vlmeval/smp/misc.py`` (``process_punctuation``) and ``vlmeval/utils/matching_util.py``
(``can_infer_option``, ``can_infer_text``, ``can_infer``) at commit e8e78f05.
"""

from __future__ import annotations

import re

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
_OPTION_SEPARATORS = ".()[],:;!*#{}"
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# "The correct answer is **B**", "Answer: B"; the letter itself must be upper case and stand alone.
_ANSWER_IS = re.compile(r"(?i:(?:correct\s+)?answer\s*(?:is|:))\s*\**\(?([A-Z])\)?\**(?![A-Za-z])")
_LAST_TOKENS = 4  # the letter must be among the last four tokens (VLMEvalKit: index > len - 5)


def strip_punctuation(text: str) -> str:
    """VQA-style punctuation removal: glued marks become spaces, spaced ones go, lone periods go."""
    drop_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _PUNCT:
        spaced = f"{p} " in text or f" {p}" in text
        out = out.replace(p, "" if spaced or drop_all else " ")
    return _LONE_PERIOD.sub("", out)


def extract_yes_no(prediction: str) -> str:
    """Yes if the word yes occurs and no does not, No in the reverse case, else Unknown."""
    words = strip_punctuation(str(prediction).lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "Yes"
    if has_no and not has_yes:
        return "No"
    return "Unknown"


def extract_option(prediction: str, options: dict[str, str]) -> str | None:
    """The option letter a prediction names, or None when it cannot be inferred."""
    prediction = str(prediction)
    letter, give_up = _infer_letter(prediction, options)
    if letter or give_up:
        return letter
    return _infer_from_text(prediction, options)


def _infer_letter(prediction: str, options: dict[str, str]) -> tuple[str | None, bool]:
    """(letter, give_up): a letter token near the end or an "answer is X" phrase.

    ``give_up`` is True for refusals and a bare "Z" (VLMEvalKit's "no option"), which stop
    the search before the option-text fallback.
    """
    if any(refusal in prediction for refusal in _REFUSALS):
        return None, True
    tokens = _tokens(prediction)
    present = [letter for letter in options if letter in tokens]
    if len(present) == 1 and tokens.index(present[0]) >= len(tokens) - _LAST_TOKENS:
        return present[0], False
    if not present and "Z" in tokens:
        return None, True
    match = _ANSWER_IS.search(prediction)
    if match and match.group(1) in options:
        return match.group(1), False
    return None, False


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
