"""The sample schema shared by every stage, and LLaVA JSON reading and writing.

A sample is a plain dict (cheap to hash, to store as Arrow and to pass between plugins):

    id             unique in the pool: "<source>/<record id>"
    source         the recipe's name for the source it came from
    category       a task category such as "ocr" (or None)
    image          absolute path of the image file (or None for a text-only sample)
    conversations  LLaVA turns: [{"from": "human"|"gpt", "value": str}, ...]; "<image>" marks the image
    noisy          ground truth where known (the toy world): True if this sample's label is wrong, else False/None
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NotRequired, TypedDict

IMAGE_TOKEN = "<image>"


class Sample(TypedDict):
    id: str
    source: str
    category: str | None
    image: str | None
    conversations: list[dict[str, str]]
    noisy: bool | None
    quality: NotRequired[str | None]  # the source's known quality where known (toy world): clean, noisy, ...


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def to_messages(sample: Sample) -> list[dict[str, Any]]:
    """LLaVA conversations as chat messages with typed content ({"type": "image"} where <image> stood)."""
    messages = []
    for turn in sample["conversations"]:
        role = ROLES[turn["from"]]
        text = turn["value"]
        content: list[dict[str, Any]] = []
        if IMAGE_TOKEN in text:
            before, _, after = text.partition(IMAGE_TOKEN)
            for part, is_image in (
                (before.strip(), False),
                (None, True),
                (after.replace(IMAGE_TOKEN, "").strip(), False),
            ):
                if is_image:
                    content.append({"type": "image"})
                elif part:
                    content.append({"type": "text", "text": part})
        else:
            content.append({"type": "text", "text": text})
        messages.append({"role": role, "content": content})
    return messages


def sample_text(sample: Sample) -> str:
    """The sample's words: every turn's text, one per line, without the image marker."""
    return "\n".join(turn["value"].replace(IMAGE_TOKEN, "") for turn in sample["conversations"])


def fix_image_parts(messages: list[dict[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """Make the count of {"type": "image"} parts n_images (0 or 1): add one to the first user turn or drop extras."""
    seen = 0
    fixed = []
    for m in messages:
        content = []
        for part in m["content"]:
            if part.get("type") == "image":
                seen += 1
                if seen > n_images:
                    continue
            content.append(part)
        fixed.append({**m, "content": content})
    if n_images and seen == 0:
        for m in fixed:
            if m["role"] == "user":
                m["content"] = [{"type": "image"}, *m["content"]]
                break
    return fixed


def sample_to_row(sample: Sample) -> dict[str, Any]:
    """A Sample as a TRL vision row: {"messages": typed chat messages, "images": [image path] or []}."""
    images = [sample["image"]] if sample.get("image") else []
    return {"messages": fix_image_parts(to_messages(sample), len(images)), "images": images}


def write_llava_json(samples: list[Sample], path: Path, image_root: Path | None = None) -> None:
    """Write samples as LLaVA JSON; image paths are made relative to image_root when given."""
    records = []
    for s in samples:
        rec: dict[str, Any] = {"id": s["id"], "conversations": s["conversations"]}
        if s["image"]:
            img = Path(s["image"])
            rec["image"] = str(img.relative_to(image_root)) if image_root else str(img)
        for key in ("source", "category", "noisy"):
            if s.get(key) is not None:
                rec[key] = s[key]
        records.append(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
