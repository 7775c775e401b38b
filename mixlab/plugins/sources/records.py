"""Checking LLaVA-style records: one clear message per bad record, or skip-and-count."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from mixlab.data import IMAGE_TOKEN, Sample
from mixlab.errors import UserError

OnError = Literal["raise", "skip"]
ImageCheck = Literal["open", "exists", "none"]


class BadRecord(Exception):
    """One record is malformed; the message says what is wrong with it."""


def check_image(path: Path, how: ImageCheck) -> None:
    if how == "none":
        return
    if not path.is_file():
        raise BadRecord(f"image file {path} does not exist")
    if how == "open":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise BadRecord(f"image file {path} is not a readable image ({exc})") from None


def to_sample(record: Any, index: int, image_root: Path, how: ImageCheck) -> Sample:
    """A LLaVA JSON record as a Sample (id, image, conversations of human/gpt turns); BadRecord if malformed."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected an object, got {type(record).__name__}")
    if "_error" in record:  # a converter upstream already found the problem
        raise BadRecord(record["_error"])
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
    image = record.get("image")
    has_token = any(IMAGE_TOKEN in t["value"] for t in turns)
    if image:
        if not isinstance(image, str):
            raise BadRecord("`image` must be a relative path string (one image per record)")
        path = (image_root / image).resolve()
        check_image(path, how)
        if not has_token:  # the LLaVA convention: the image goes before the first question
            turns = [{"from": turns[0]["from"], "value": f"{IMAGE_TOKEN}\n{turns[0]['value']}"}, *turns[1:]]
        image = str(path)
    elif has_token:
        raise BadRecord("text mentions <image> but the record has no `image`")
    noisy = record.get("noisy")
    return {
        "id": str(record.get("id", index)),
        "source": record.get("source"),
        "category": record.get("category"),
        "image": image,
        "conversations": [{"from": t["from"], "value": t["value"]} for t in turns],
        "noisy": noisy if isinstance(noisy, bool) else None,
    }


def collect(
    records: list[Any], file: Path, image_root: Path, how: ImageCheck, on_error: OnError, source: str
) -> tuple[list[Sample], list[str]]:
    """Convert every record; raise on the first bad one, or skip bad ones and return their messages."""
    samples, skipped = [], []
    for index, record in enumerate(records):
        try:
            sample = to_sample(record, index, image_root, how)
        except BadRecord as exc:
            rid = record.get("id", "?") if isinstance(record, dict) else "?"
            message = f"{file}: record {index} (id {rid!r}): {exc}"
            if on_error == "raise":
                raise UserError(f'{message}. Fix the record, or set on_error = "skip" in [sources.{source}].') from None
            skipped.append(message)
            continue
        sample["source"] = source
        samples.append(sample)
    return samples, skipped
