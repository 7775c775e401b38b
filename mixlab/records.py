"""Raw data records to checked samples: reading LLaVA JSON/JSONL (UTF-8, located syntax errors) and turning each
record into a Sample with one clear message per bad record, or skip-and-count."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from mixlab.data import IMAGE_TOKEN, Sample
from mixlab.errors import UserError
from mixlab.paths import expand_user
from mixlab.textfiles import read_text

OnError = Literal["raise", "skip"]
ImageCheck = Literal["open", "exists", "none"]


class BadRecord(Exception):
    """One record is malformed; the message says what is wrong with it."""


def check_image(path: Path, how: ImageCheck) -> None:
    """ "exists": the file is there; "open": it also decodes (every pixel, so truncated or corrupt data is caught)."""
    if how == "none":
        return
    if path.is_dir():
        raise BadRecord(f"image {path} is a folder, not an image file")
    if not path.is_file():
        raise BadRecord(f"image file {path} does not exist")
    if how == "open":
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.load()
                if img.width < 1 or img.height < 1:
                    raise ValueError("it has no pixels")
        except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError, DecompressionBomb...)
            raise BadRecord(f"image file {path} is not a readable image ({type(exc).__name__}: {exc})") from None


def image_path(image: str, image_root: Path) -> Path:
    """An image path of a record, resolved against the image root; BadRecord if a relative one leaves the root."""
    if "\0" in image:
        raise BadRecord("`image` holds a NUL character")
    path = expand_user(image)
    if path.is_absolute():
        return path
    root = Path(os.path.normpath(image_root.absolute()))
    full = Path(os.path.normpath(root / path))
    if not full.is_relative_to(root):
        raise BadRecord(
            f"image path {image!r} leaves the image root {root} (it climbs out with '..'): give a path inside "
            "the image root, or set `image_root` to a folder that holds every image"
        )
    return full.resolve()


def to_sample(record: Any, index: int, image_root: Path, how: ImageCheck, source: str) -> Sample:
    """A LLaVA JSON record as a Sample of ``source`` (id, image, conversations of human/gpt turns); BadRecord if
    malformed."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected an object, got {type(record).__name__}")
    if "_error" in record:  # a converter upstream already found the problem
        raise BadRecord(record["_error"])
    if "id" in record and (isinstance(record["id"], bool) or not isinstance(record["id"], (str, int))):
        raise BadRecord(f"`id` must be a string or an integer, got {record['id']!r:.60}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRecord("`conversations` must be a non-empty list of {from, value} turns")
    for i, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or turn.get("from") not in ("human", "gpt")
            or not isinstance(turn.get("value"), str)
        ):
            raise BadRecord(f'turn {i} must be {{"from": "human"|"gpt", "value": "<text>"}}, got {turn!r:.80}')
    if not any(t["from"] == "gpt" for t in turns):
        raise BadRecord("no `gpt` turn: nothing to train on")
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise BadRecord(f'`category` must be a string (a name such as "color"), got {category!r:.60}')
    image = record.get("image")
    has_token = any(IMAGE_TOKEN in t["value"] for t in turns)
    if image:
        if not isinstance(image, str):
            raise BadRecord("`image` must be a relative path string (one image per record)")
        if any(IMAGE_TOKEN in t["value"] for t in turns if t["from"] == "gpt"):
            raise BadRecord("a `gpt` turn mentions <image>: the image goes in a `human` turn (before the question)")
        path = image_path(image, image_root)
        check_image(path, how)
        if not has_token:  # the LLaVA convention: the image goes before the first question
            first = next((i for i, t in enumerate(turns) if t["from"] == "human"), None)
            if first is None:
                raise BadRecord("the record has an image but no `human` turn to show it in: add the question")
            turns = [
                *turns[:first],
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{turns[first]['value']}"},
                *turns[first + 1 :],
            ]
        image = str(path)
    elif has_token:
        raise BadRecord("text mentions <image> but the record has no `image`")
    noisy = record.get("noisy")
    return {
        "id": str(record.get("id", index)),
        "source": source,
        "category": category,
        "image": image,
        "conversations": [{"from": t["from"], "value": t["value"]} for t in turns],
        "noisy": noisy if isinstance(noisy, bool) else None,
    }


def collect(
    records: list[Any],
    file: Path,
    image_root: Path,
    how: ImageCheck,
    on_error: OnError,
    source: str,
    lines: list[int] | None = None,
) -> tuple[list[Sample], list[str]]:
    """Convert every record; raise on the first bad one, or skip bad ones and return their messages (which name the
    record's line where `lines` gives it: `read_records_with_lines`).

    A record whose id repeats an earlier one's is bad too (ids name samples in selections and reports).
    """
    samples, skipped = [], []
    first_of: dict[str, int] = {}

    def record_at(index: int) -> str:
        return f"record {index}" + (f" (line {lines[index]})" if lines else "")

    for index, record in enumerate(records):
        rid = record.get("id", "?") if isinstance(record, dict) else "?"
        try:
            sample = to_sample(record, index, image_root, how, source)
            if sample["id"] in first_of:
                raise BadRecord(
                    f"duplicate id {sample['id']!r} ({record_at(first_of[sample['id']])} has it too): give every "
                    "record its own id"
                )
        except BadRecord as exc:
            where = f"{file}:{lines[index]}" if lines else str(file)
            message = f"{where}: record {index} (id {rid!r}): {exc}"
            if on_error == "raise":
                raise UserError(f'{message}. Fix the record, or set on_error = "skip" in [sources.{source}].') from None
            skipped.append(message)
            continue
        first_of[sample["id"]] = index
        samples.append(sample)
    return samples, skipped


def nothing_loaded(file: Path, source: str, total: int, skipped: list[str]) -> UserError:
    """The error for a source that yields no sample: an empty file, or every record skipped."""
    if total == 0:
        return UserError(f"{file}: no records, so [sources.{source}] has nothing to train on. Give a file with data.")
    return UserError(
        f"{file}: all {total} records were skipped as bad, so [sources.{source}] has nothing to train on. Fix the "
        f"records; the first: {skipped[0]}"
    )


def root_problem(root: Path, explicit: bool) -> str | None:
    """What is wrong with an image root folder, or None."""
    what = "`image_root`" if explicit else "the image root (the data file's folder)"
    if not root.exists():
        return f"{what} {root} does not exist: set `image_root` to the folder that holds the images"
    if not root.is_dir():
        return f"{what} {root} is a file, not a folder: set `image_root` to the folder that holds the images"
    return None


def path_problem(path: Path, suffixes: tuple[str, ...] | None, folder_ok: bool = False) -> str | None:
    """What is wrong with a data path (missing, a folder, an unsupported kind of file), or None."""
    if not path.exists():
        return f"{path} does not exist: check `path` (relative to the recipe's folder)"
    if path.is_dir() and not folder_ok:
        return f"{path} is a folder: give the data file itself"
    if path.is_file() and suffixes and path.suffix.lower() not in suffixes:
        return f"{path} has the unsupported suffix {path.suffix!r}: give a {' or '.join(suffixes)} file"
    return None


def read_data_text(path: Path) -> str:
    """A data file's text as UTF-8, or a UserError naming the file (and the line of the first bad byte)."""
    return read_text(
        path,
        "data file",
        "check `path` in the recipe.",
        "JSON data must be UTF-8: convert the file (e.g. `iconv -f latin1 -t utf-8`).",
    )


def read_records(path: Path) -> list:
    """A JSON list or JSON lines, with a located message on a syntax error."""
    return read_records_with_lines(path)[0]


def read_records_with_lines(path: Path) -> tuple[list, list[int] | None]:
    """`read_records`, and for JSON lines the line of each record (None for a JSON list), so that a message about a
    record can name its line."""
    text = read_data_text(path)
    if path.suffix.lower() == ".jsonl":
        records, lines = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number}: invalid JSON ({e.msg}). Fix that line.") from None
                except (ValueError, RecursionError) as e:  # a number of over 4,300 digits, deep nesting
                    raise UserError(f"{path}:{number}: cannot read this JSON ({_why(e)}). Fix that line.") from None
                lines.append(number)
        return records, lines
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (one JSON object per line? then name the file .jsonl)" if e.msg == "Extra data" else ""
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}){hint}. Fix the file at that line.") from None
    except (ValueError, RecursionError) as e:  # a number of over 4,300 digits, deep nesting
        raise UserError(f"{path}: cannot read this JSON ({_why(e)}). Check the file.") from None
    if not isinstance(data, list):
        raise UserError(
            f'{path}: expected a JSON list of LLaVA records ([{{"id": ..., "conversations": [...]}}, ...]), '
            f"got a JSON {type(data).__name__}. Put the records in one top-level list, [ ... ]."
        )
    return data, None


def _why(error: Exception) -> str:
    return "nested too deeply" if isinstance(error, RecursionError) else str(error).split(";")[0]
