"""Read VLMEvalKit-format benchmark TSVs, decode their images and build the LLaVA-protocol prompt.

A VLMEvalKit TSV has a header row and one question per row: ``index``, ``image`` (base64, or the
``index`` of another row whose image it shares), ``question``, ``answer``, and for multiple choice
the option columns ``A``, ``B``, ... plus optional ``hint``, ``category``, ``l2-category``.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import string
import sys
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mixlab.errors import UserError

KINDS = ("mme", "mmbench", "seed", "scienceqa", "mcq", "yorn")
MCQ_KINDS = ("mmbench", "seed", "scienceqa", "mcq")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
SINGLE_LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
_MAX_REF_LEN = 64  # VLMEvalKit: an image field this short names another row's index

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def load_tsv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a VLMEvalKit TSV as dicts; ``index`` is an int, empty cells stay ""."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: benchmark TSV not found; check the path in the recipe.")
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header:
            raise UserError(f"{path}:1: empty file, expected a header row of column names.")
        if "index" not in header:
            raise UserError(f"{path}:1: no 'index' column in the header {header[:8]}.")
        rows = [_parse_row(path, reader.line_num, header, cells) for cells in reader if cells]
    _resolve_image_refs(rows)
    return rows


def _parse_row(path: Path, line: int, header: list[str], cells: list[str]) -> dict[str, Any]:
    """One data row as a dict, checked for field count and an integer index."""
    if len(cells) != len(header):
        raise UserError(
            f"{path}:{line}: {len(cells)} tab-separated fields, expected {len(header)} "
            "(a field with a tab or newline must be quoted)."
        )
    row: dict[str, Any] = dict(zip(header, cells, strict=True))
    try:
        row["index"] = int(row["index"])
    except ValueError:
        raise UserError(f"{path}:{line}: index {row['index']!r} is not an integer.") from None
    return row


def _resolve_image_refs(rows: list[dict[str, Any]]) -> None:
    """Replace an ``image`` that names another row's index by that row's base64 image."""
    by_index = {str(r["index"]): r.get("image", "") for r in rows}
    for row in rows:
        image = row.get("image", "")
        if 0 < len(image) <= _MAX_REF_LEN and len(by_index.get(image, "")) > _MAX_REF_LEN:
            row["image"] = by_index[image]


def decode_image(b64: str, index: int | str | None = None) -> Image.Image:
    """Decode a base64 image to RGB; ``index`` names the row in the error message."""
    try:
        image = Image.open(io.BytesIO(base64.b64decode(b64, validate=False)))
        image.load()
        return image.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"row index {index}: not a valid base64 image ({e}).") from None


def detect_kind(name: str, columns: list[str], answers: list[str] | None = None) -> str:
    """Benchmark kind from the dataset name, else from its columns (and answers, if given)."""
    lowered = name.lower()
    for kind, keys in (
        ("mmbench", ("mmbench", "ccbench", "circular")),
        ("mme", ("mme",)),
        ("seed", ("seed",)),
        ("scienceqa", ("scienceqa",)),
    ):
        if any(k in lowered for k in keys):
            return kind
    if "A" in columns and "B" in columns:
        return "mcq"
    if "answer" in columns and _all_yes_no(answers):
        return "yorn"
    raise UserError(
        f"benchmark {name!r}: cannot tell its kind; expected option columns A and B "
        "(multiple choice) or yes/no answers."
    )


def _all_yes_no(answers: list[str] | None) -> bool:
    """True when no answers are given or every answer is yes or no."""
    return answers is None or all(a.strip().lower() in ("yes", "no") for a in answers)


def options(row: dict[str, Any]) -> dict[str, str]:
    """Option letters A, B, ... that carry non-empty text, in letter order."""
    return {letter: str(row[letter]) for letter in string.ascii_uppercase if letter in row and str(row[letter]).strip()}


def build_prompt(row: dict[str, Any], kind: str) -> str:
    """The LLaVA-protocol text prompt for a row (the image is passed separately).

    Multiple choice: ``Context: <hint>`` (if any), the question, one ``X. option`` line each, then the single-letter
    instruction — the LLaVA-665K training form, so evaluation asks in the format the model was trained on.
    """
    if kind not in KINDS:
        raise UserError(f"unknown benchmark kind {kind!r}; expected one of {', '.join(KINDS)}.")
    question = str(row.get("question", ""))
    if kind not in MCQ_KINDS:
        return question
    hint = str(row.get("hint", "")).strip()
    lines = [f"Context: {hint}"] if hint else []
    lines.append(question)
    lines += [f"{k}. {v}" for k, v in options(row).items()]
    return "\n".join([*lines, SINGLE_LETTER_PROMPT])


def build_cloze_prompt(row: dict[str, Any]) -> str:
    """A multiple-choice row asked as a short-answer question (``Context: <hint>``, the question, the short-answer
    instruction): each option's text is then scored as the answer, as lm-eval scores multiple choice."""
    hint = str(row.get("hint", "")).strip()
    lines = [f"Context: {hint}"] if hint else []
    return "\n".join([*lines, str(row.get("question", "")), SHORT_ANSWER_PROMPT])
