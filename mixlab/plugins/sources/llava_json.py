"""``llava_json``: LLaVA-format JSON or JSONL (id, image, conversations of human/gpt turns) + an image folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, RunContext, Source
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.hookspecs import Register
from mixlab.records import (
    ImageCheck,
    OnError,
    collect,
    nothing_loaded,
    path_problem,
    read_records_with_lines,
    root_problem,
)


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


class LlavaJson(Source):
    """LLaVA-665K style data: any JSON list of {id, image, conversations}, text-only records included."""

    name = "llava_json"
    Options = LlavaJsonOptions
    path_options = frozenset({"path", "image_root"})
    options: LlavaJsonOptions

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

    def load(self, ctx: RunContext) -> list[Sample]:
        path = self.resolve(self.options.path)
        records, lines = read_records_with_lines(path)
        records, lines = records[: self.options.limit], lines and lines[: self.options.limit]
        root = self.image_root()
        if any(isinstance(r, dict) and r.get("image") for r in records) and (
            found := root_problem(root, self.options.image_root is not None)
        ):
            raise UserError(f"[sources.{self.label}]: {found}.")
        samples, skipped = collect(
            records, path, root, self.options.check_images, self.options.on_error, self.label, lines
        )
        if not samples:
            raise nothing_loaded(path, self.label, len(records), skipped)
        if skipped:
            ctx.record(skipped=len(skipped))
            ctx.log(f"[yellow]{self.label}: skipped {len(skipped)} bad records[/], e.g. {skipped[0]}")
        return samples


@hookimpl
def register_sources(register: Register) -> None:
    register(LlavaJson)
