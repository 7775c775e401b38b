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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mixlab.errors import UserError

KINDS = ("mme", "pope", "mmbench", "seed", "scienceqa", "mcq", "yorn")
MCQ_KINDS = ("mmbench", "seed", "scienceqa", "mcq")
# VLMEvalKit evaluates a multiple-choice set circularly when its lower-cased name contains one of these.
CIRCULAR_NAMES = ("mmbench", "ccbench", "circular", "mmcr")
# Cells pandas' TSV reader (pandas 2) turns into NaN: VLMEvalKit treats them as empty (no image, no option).
MISSING_CELLS = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA")
    + ("NULL", "NaN", "None", "n/a", "nan", "null")
)
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
SINGLE_LETTER_PROMPT = "Answer with the option's letter from the given choices directly."
_MAX_REF_LEN = 64  # VLMEvalKit: an image field this short names another row's index

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def load_tsv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a VLMEvalKit TSV as dicts; ``index`` is an int, empty cells stay ""."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: benchmark TSV not found; check the path in the recipe.")
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    line = 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header:
                raise UserError(f"{path}:1: empty file, expected a header row of column names; give a VLMEvalKit TSV.")
            if "index" not in header:
                raise UserError(f"{path}:1: no 'index' column in the header {header[:8]}; give a VLMEvalKit TSV.")
            for cells in reader:
                line = reader.line_num
                if cells:
                    rows.append(_parse_row(path, line, header, cells))
                    lines.append(line)
    except UnicodeDecodeError:
        raw = path.read_bytes()
        start = _first_bad_byte(raw)
        bad_line = raw[:start].count(b"\n") + 1
        raise UserError(
            f"{path}:{bad_line}: not UTF-8 text (byte 0x{raw[start]:02x}). Save the TSV as UTF-8."
        ) from None
    except csv.Error as e:
        raise UserError(f"{path}:{line + 1}: not a readable TSV row ({e}). Fix the file at that line.") from None
    _check_rows(path, header, rows, lines)
    _resolve_image_refs(rows)
    return rows


def tsv_categories(path: Path) -> set[str] | None:
    """The names a TSV's items can be selected by: each `category` value, and for a comma-separated value (POPE's
    rows name several) each part too; empty without a `category` column, None for a file that cannot be read (its
    validation says why). Reads that one column only."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None) or []
            if "category" not in header:
                return set()
            at = header.index("category")
            values = {cells[at].strip() for cells in reader if len(cells) > at}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return {name for value in values for name in (value, *(part.strip() for part in value.split(","))) if name}


def _first_bad_byte(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return 0


def _check_rows(path: Path, header: list[str], rows: list[dict[str, Any]], lines: list[int]) -> None:
    """What scoring needs of each row, named by file and line: a unique index, a question, an image reference that
    resolves, and an answer that is one of the row's options (multiple choice) or Yes/No (MME, POPE)."""
    if "question" not in header:
        raise UserError(f"{path}:1: no 'question' column in the header {header[:8]}; give a VLMEvalKit TSV.")
    multiple_choice = "A" in header and "B" in header
    yes_no = not multiple_choice and ("MME" in path.stem or "POPE" in path.stem)
    first: dict[int, int] = {}
    images = {str(r["index"]): r.get("image", "") for r in rows}
    for row, line in zip(rows, lines, strict=True):
        where = f"{path}:{line}: row index {row['index']}"
        if row["index"] in first:
            raise UserError(
                f"{where} appears twice (also on line {first[row['index']]}): give every row its own index."
            )
        first[row["index"]] = line
        if is_missing(row["question"]) or not str(row["question"]).strip():
            raise UserError(f"{where}: no question. Fill in the question or remove the row.")
        image = row.get("image", "")
        if not is_missing(image) and len(image) <= _MAX_REF_LEN:
            if image not in images:
                raise UserError(
                    f"{where}: image {image!r} is neither a base64 image nor the index of another row. Fix the image "
                    "cell."
                )
            target = images[image]
            if is_missing(target) or len(target) <= _MAX_REF_LEN:
                raise UserError(
                    f"{where}: image {image!r} refers to row index {image}, which has no base64 image of its own (a "
                    "reference must name the row that holds the image). Fix the image cell."
                )
        if "answer" not in row:
            continue
        answer = str(row["answer"]).strip()
        if is_missing(row["answer"]) or not answer:
            raise UserError(f"{where}: no answer. Fill in the answer or remove the row.")
        if multiple_choice and answer not in options(row):
            letters = ", ".join(options(row)) or "none"
            raise UserError(
                f"{where}: answer {answer!r} is not one of the row's option letters ({letters}). Fix the answer or "
                "the options."
            )
        if yes_no and answer.lower() not in ("yes", "no"):
            raise UserError(f"{where}: answer {answer!r} is not Yes or No, as {path.stem} needs. Fix the answer.")


def _parse_row(path: Path, line: int, header: list[str], cells: list[str]) -> dict[str, Any]:
    """One data row as a dict, checked for field count and an integer index."""
    if len(cells) != len(header):
        raise UserError(
            f"{path}:{line}: {len(cells)} tab-separated fields, expected {len(header)} "
            "(a field with a tab or newline must be quoted): fix that row."
        )
    row: dict[str, Any] = dict(zip(header, cells, strict=True))
    try:
        row["index"] = int(row["index"])
    except ValueError:
        raise UserError(
            f"{path}:{line}: index {row['index']!r} is not an integer: give each row an integer index."
        ) from None
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
    with _reading_image(index):
        image = open_image(b64, index)
        image.load()
        return image.convert("RGB")


def open_image(b64: str, index: int | str | None = None) -> Image.Image:
    """Open a base64 image without decoding its pixels (its format and size are read): a cheap check of the cell."""
    with _reading_image(index):
        return Image.open(io.BytesIO(base64.b64decode(b64, validate=False)))


_PNG, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_JPEG, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


def check_image(b64: str, index: int | str | None = None) -> None:
    """A UserError naming the row if its base64 image cannot be read: its header always, and its pixels unless the
    file visibly ends where it should (a PNG with its IEND chunk, a JPEG with its end marker). A cell cut short is
    found before any training, and only images without that end are decoded in full."""
    with _reading_image(index):
        data = base64.b64decode(b64, validate=False)
        with Image.open(io.BytesIO(data)) as image:
            ends = (
                data.endswith(_PNG_END)
                if data.startswith(_PNG)
                else data.startswith(_JPEG) and data.rstrip(b"\x00\r\n ").endswith(_JPEG_END)
            )
            if not ends:
                image.load()


@contextmanager
def _reading_image(index: int | str | None) -> Iterator[None]:
    """What goes wrong reading a row's base64 image, as a UserError naming the row."""
    try:
        yield
    except (binascii.Error, ValueError):
        raise UserError(f"row index {index}: the image is not valid base64: fix the image cell.") from None
    except (UnidentifiedImageError, OSError) as e:
        reason = "not an image format PIL reads" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UserError(
            f"row index {index}: the base64 image cannot be decoded ({reason}): fix the image cell."
        ) from None


def detect_kind(name: str, columns: list[str], answers: list[str] | None = None) -> str:
    """Benchmark kind from the columns and answers first, then the name as VLMEvalKit reads it.

    Option columns A and B: multiple choice, circular ("mmbench") when the lower-cased name contains one of
    ``CIRCULAR_NAMES``, labelled "seed"/"scienceqa" by name, else "mcq". Otherwise, when every answer is yes or no
    (or no answers are given): "mme" when the name contains "MME", "pope" when it contains "POPE" (both
    case-sensitive, as VLMEvalKit matches them), else "yorn".
    """
    if "A" in columns and "B" in columns:
        return _mcq_kind(name.lower())
    if "answer" in columns and _all_yes_no(answers):
        return "mme" if "MME" in name else "pope" if "POPE" in name else "yorn"
    raise UserError(
        f"benchmark {name!r}: cannot tell its kind; expected option columns A and B (multiple choice) or an "
        "`answer` column of Yes/No. Add the option columns or the yes/no answers."
    )


def _mcq_kind(lowered: str) -> str:
    """The multiple-choice kind of a lower-cased benchmark name."""
    if any(k in lowered for k in CIRCULAR_NAMES):
        return "mmbench"
    if "seed" in lowered:
        return "seed"
    return "scienceqa" if "scienceqa" in lowered else "mcq"


def _all_yes_no(answers: list[str] | None) -> bool:
    """True when no answers are given or every answer is yes or no."""
    return answers is None or all(a.strip().lower() in ("yes", "no") for a in answers)


def is_missing(cell: Any) -> bool:
    """True for a cell VLMEvalKit reads as empty: "" or a spelling of NaN such as "NA" or "None"."""
    return cell is None or str(cell) in MISSING_CELLS


def lacks_image(row: dict[str, Any]) -> bool:
    """True for a row of a table with an ``image`` column whose image cell is empty (VLMEvalKit skips it)."""
    return "image" in row and is_missing(row["image"])


def options(row: dict[str, Any]) -> dict[str, str]:
    """Option letters A, B, ... that carry text (not blank, not a NaN spelling), in letter order."""
    return {
        letter: str(row[letter])
        for letter in string.ascii_uppercase
        if letter in row and str(row[letter]).strip() and not is_missing(row[letter])
    }


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
