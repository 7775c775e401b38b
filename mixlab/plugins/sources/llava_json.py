"""``llava_json``: LLaVA-format JSON or JSONL (id, image, conversations of human/gpt turns) + an image folder."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, Source
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.plugins.sources.records import ImageCheck, OnError, collect, nothing_loaded, path_problem, root_problem


class LlavaJsonOptions(Options):
    path: str = Field(description="The .json (a list of records) or .jsonl file, relative to the recipe.")
    image_root: str | None = Field(
        None, description="Folder that record `image` paths are relative to (default: the JSON file's folder)."
    )
    on_error: OnError = Field("raise", description='"raise": stop at a bad record; "skip": skip and count it.')
    check_images: ImageCheck = Field(
        "open", description='"open": decode every image at load; "exists": only check the files are there; "none".'
    )
    limit: int | None = Field(None, ge=1, description="Keep only the first N records (quick trials).")


def read_text(path: Path) -> str:
    """A data file's text as UTF-8, or a UserError naming the file and the line of the first bad byte."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a data file. Check `path` in the recipe.")
    if not path.is_file():
        raise UserError(f"data file {path} not found. Check `path` in the recipe.")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the data file ({e.strerror}). Check its permissions.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}). JSON data must be UTF-8: convert the file "
            "(e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def read_records(path: Path) -> list:
    """A JSON list or JSON lines, with a located message on a syntax error."""
    text = read_text(path)
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
        hint = " (one JSON object per line? then name the file .jsonl)" if e.msg == "Extra data" else ""
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}){hint}. Fix the file at that line.") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read. Check the file.") from None
    if not isinstance(data, list):
        raise UserError(
            f'{path}: expected a JSON list of LLaVA records ([{{"id": ..., "conversations": [...]}}, ...]), '
            f"got a JSON {type(data).__name__}."
        )
    return data


class LlavaJson(Source):
    """LLaVA-665K style data: any JSON list of {id, image, conversations}, text-only records included."""

    name = "llava_json"
    Options = LlavaJsonOptions

    def fingerprint(self) -> str:
        path = self.resolve(self.options.path)
        return f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.exists() else "missing"

    def image_root(self) -> Path:
        return (
            self.resolve(self.options.image_root) if self.options.image_root else self.resolve(self.options.path).parent
        )

    def check(self) -> list[tuple[tuple, str]]:
        problems = []
        found = path_problem(self.resolve(self.options.path), (".json", ".jsonl"))
        if found:
            problems.append((("path",), found))
        elif self.options.image_root is not None and (found := root_problem(self.image_root(), True)):
            problems.append((("image_root",), found))
        return problems

    def load(self, ctx) -> list[Sample]:
        path = self.resolve(self.options.path)
        records = read_records(path)[: self.options.limit]
        root = self.image_root()
        if any(isinstance(r, dict) and r.get("image") for r in records) and (
            found := root_problem(root, self.options.image_root is not None)
        ):
            raise UserError(f"[sources.{self.label}]: {found}.")
        samples, skipped = collect(records, path, root, self.options.check_images, self.options.on_error, self.label)
        if not samples:
            raise nothing_loaded(path, self.label, len(records), skipped)
        if skipped:
            ctx.record(skipped=len(skipped))
            ctx.log(f"[yellow]{self.label}: skipped {len(skipped)} bad records[/], e.g. {skipped[0]}")
        return samples


@hookimpl
def register_sources(register):
    register(LlavaJson)
