"""``llava_json``: LLaVA-format JSON or JSONL (id, image, conversations of human/gpt turns) + an image folder."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, Source
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.plugins.sources.records import ImageCheck, OnError, collect


class LlavaJsonOptions(Options):
    path: str = Field(description="The .json (a list of records) or .jsonl file, relative to the recipe.")
    image_root: str | None = Field(
        None, description="Folder that record `image` paths are relative to (default: the JSON file's folder)."
    )
    on_error: OnError = Field("raise", description='"raise": stop at a bad record; "skip": skip and count it.')
    check_images: ImageCheck = Field("open", description='"open" (read each header), "exists", or "none".')
    limit: int | None = Field(None, ge=1, description="Keep only the first N records (quick trials).")


def read_records(path: Path) -> list:
    """A JSON list or JSON lines, with a located message on a syntax error."""
    if not path.is_file():
        raise UserError(f"data file {path} not found. Check `path` in the recipe.")
    text = path.read_text()
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{number}: invalid JSON ({e.msg}). Fix that line.") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}). Fix the file at that line.") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of LLaVA records, got {type(data).__name__}.")
    return data


class LlavaJson(Source):
    """LLaVA-665K style data: any JSON list of {id, image, conversations}, text-only records included."""

    name = "llava_json"
    Options = LlavaJsonOptions

    def fingerprint(self) -> str:
        path = self.resolve(self.options.path)
        return f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.exists() else "missing"

    def load(self, ctx) -> list[Sample]:
        path = self.resolve(self.options.path)
        records = read_records(path)[: self.options.limit]
        root = self.resolve(self.options.image_root) if self.options.image_root else path.parent
        samples, skipped = collect(records, path, root, self.options.check_images, self.options.on_error, self.label)
        if skipped:
            ctx.record(skipped=len(skipped))
            ctx.log(f"[yellow]{self.label}: skipped {len(skipped)} bad records[/], e.g. {skipped[0]}")
        return samples


@hookimpl
def register_sources(register):
    register(LlavaJson)
