"""``hf_dataset``: chat data with ``messages`` + ``images`` (TRL's vision format) from disk, parquet or JSON lines."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, RunContext, Source
from mixlab.data import IMAGE_TOKEN, Sample
from mixlab.errors import UserError
from mixlab.hookspecs import Register
from mixlab.records import (
    BadRecord,
    ImageCheck,
    OnError,
    collect,
    image_path,
    nothing_loaded,
    path_problem,
    read_records_with_lines,
    root_problem,
)

ROLE_TO_LLAVA = {"user": "human", "assistant": "gpt", "system": None}
SUFFIXES = (".parquet", ".jsonl", ".json")


class HfDatasetOptions(Options):
    path: str = Field(description="A `save_to_disk` folder, a .parquet file or a .jsonl file, relative to the recipe.")
    split: str = Field("train", description="Split to read when the folder is a DatasetDict.")
    image_root: str | None = Field(None, description="Folder that string image paths are relative to.")
    on_error: OnError = Field("raise", description='"raise": stop at a bad record; "skip": skip and count it.')
    check_images: ImageCheck = Field(
        "open", description='"open": decode every image at load; "exists": only check the files are there; "none".'
    )
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _load(path: Path, split: str) -> tuple[Any, list[int] | None]:
    """The rows: a datasets.Dataset (save_to_disk folder, parquet) or a list of dicts (JSON lines, JSON list); and
    for JSON lines, the line of each row."""
    if not path.exists():
        raise UserError(f"dataset {path} not found. Check `path` in the recipe.")
    if not path.is_dir() and path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"{path}: unsupported file type {path.suffix!r}; use a save_to_disk folder, .parquet or .jsonl."
        )
    if path.suffix.lower() in (".jsonl", ".json") and not path.is_dir():
        return read_records_with_lines(path)
    import datasets

    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            import pyarrow.parquet as pq

            pq.ParquetFile(str(path)).close()  # a bad footer fails here, before datasets logs its own errors
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    except Exception as exc:  # datasets and Arrow raise many kinds; the user needs the file and what it is not
        what = "a dataset folder written by `Dataset.save_to_disk`" if path.is_dir() else "a readable parquet file"
        raise UserError(f"{path} is not {what} ({_first_line(exc)}). Check `path`, or rewrite the data.") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"dataset {path} has no split {split!r} (it has {', '.join(ds)}). Set `split`.")
        ds = ds[split]
    return ds, None


def _text(content: Any) -> tuple[str, int]:
    """Message content as LLaVA text with <image> markers, and the number of images it references."""
    if isinstance(content, str):
        return content, content.count(IMAGE_TOKEN)
    if not isinstance(content, list):
        raise BadRecord(f"message content must be a string or a list of parts, got {type(content).__name__}")
    parts, images = [], 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            parts.append(IMAGE_TOKEN)
            images += 1
        elif kind == "text":
            text = part.get("text") or ""
            if not isinstance(text, str):
                raise BadRecord(f"a text part's `text` must be a string, got {text!r:.60}")
            parts.append(text)
        else:
            raise BadRecord(f"unknown content part {part!r:.60}")
    return "\n".join(p for p in parts if p), images


class HfDataset(Source):
    """Rows of ``messages`` (role/content) and ``images``, converted to LLaVA records; image bytes are written out."""

    name = "hf_dataset"
    Options = HfDatasetOptions
    path_options = frozenset({"path", "image_root"})
    options: HfDatasetOptions

    def fingerprint(self) -> str:
        path = self.resolve(self.options.path)
        if not path.exists():
            return "missing"
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        return hashlib.sha256(
            "".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file()).encode()
        ).hexdigest()

    def check(self) -> list[tuple[tuple, str]]:
        path = self.resolve(self.options.path)
        found = path_problem(path, SUFFIXES, folder_ok=True)
        if not found and path.is_dir():
            markers = ("dataset_info.json", "state.json", "dataset_dict.json")
            if not any((path / m).is_file() for m in markers):
                found = f"{path} is a folder but not a saved dataset (no {' or '.join(markers)}): give a folder " + (
                    "written by `Dataset.save_to_disk`, or a .parquet or .jsonl file"
                )
        if found:
            return [(("path",), found)]
        if self.options.image_root is not None and (found := root_problem(self.resolve(self.options.image_root), True)):
            return [(("image_root",), found)]
        return []

    def load(self, ctx: RunContext) -> list[Sample]:
        path = self.resolve(self.options.path)
        ds, lines = _load(path, self.options.split)
        if len(ds) == 0:
            raise nothing_loaded(path, self.label, 0, [])
        if isinstance(ds, list):
            bad = next((i for i, r in enumerate(ds) if not isinstance(r, dict)), None)
            if bad is not None:
                at = f"{path}:{lines[bad]}" if lines else str(path)
                raise UserError(
                    f"{at}: row {bad} is not a JSON object: give each row as an object with `messages` (and `images`)."
                )
        columns = list(ds.column_names) if hasattr(ds, "column_names") else sorted({k for r in ds[:1000] for k in r})
        if "messages" not in columns:
            raise UserError(
                f"{path}: no `messages` column (columns: {', '.join(columns) or 'none'}). "
                "mixlab reads TRL's vision format: give rows with `messages` (and `images`)."
            )
        if self.options.limit:
            ds = (
                ds.select(range(min(self.options.limit, len(ds))))
                if hasattr(ds, "select")
                else ds[: self.options.limit]
            )
            lines = lines and lines[: self.options.limit]
        where = {"source": self.label, "fingerprint": self.fingerprint(), "split": self.options.split}
        image_dir = ctx.cache_dir("hf_images", where)  # row i's image is {i}.png: one folder per split
        root = self.resolve(self.options.image_root) if self.options.image_root else path.parent
        if self.options.image_root is not None and (found := root_problem(root, True)):
            raise UserError(f"[sources.{self.label}]: {found}.")
        records = []
        rows = iter(ds)
        for i in range(len(ds)):
            try:
                row = next(rows)
            except Exception as exc:  # a row Arrow cannot decode: the rest of the file cannot be trusted either
                raise UserError(
                    f"{path}: row {i} cannot be read ({_first_line(exc)}). Check or rewrite the data."
                ) from None
            records.append(self._record(row, i, image_dir, root))
        samples, skipped = collect(
            records, path, image_dir, self.options.check_images, self.options.on_error, self.label, lines
        )
        if not samples:
            raise nothing_loaded(path, self.label, len(records), skipped)
        if skipped:
            ctx.record(skipped=len(skipped))
            ctx.log(f"{self.label}: skipped {len(skipped)} bad rows, e.g. {skipped[0]}")
        return samples

    def _record(self, row: dict[str, Any], index: int, image_dir: Path, root: Path) -> Any:
        rid = row.get("id", index) if isinstance(row.get("id", index), (str, int)) else index
        try:
            messages = row.get("messages")
            if not isinstance(messages, list):
                raise BadRecord(f"`messages` must be a list of {{role, content}} messages, got {messages!r:.60}")
            turns, n_images = [], 0
            for message in messages:
                if not isinstance(message, dict):
                    raise BadRecord(f"a message must be an object with `role` and `content`, got {message!r:.60}")
                raw_role = message.get("role")
                role = ROLE_TO_LLAVA.get(raw_role, "?") if isinstance(raw_role, str) else "?"
                if role is None:
                    continue
                if role == "?":
                    raise BadRecord(f"unknown role {message.get('role')!r:.40} (use user, assistant or system)")
                text, count = _text(message.get("content"))
                n_images += count
                turns.append({"from": role, "value": text})
            images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
            if not isinstance(images, list):
                raise BadRecord(f"`images` must be a list of images, got {type(images).__name__}")
            if len(images) > 1:
                raise BadRecord("more than one image per sample is not supported")
            record: dict[str, Any] = {"id": str(rid), "conversations": turns}
            if images:
                record["image"] = str(self._image_path(images[0], index, image_dir, root))
            if n_images and not images:
                raise BadRecord("a message has an image part but the row has no image")
            return record
        except BadRecord as exc:
            return {"id": rid, "conversations": None, "_error": str(exc)}

    @staticmethod
    def _image_path(image: Any, index: int, image_dir: Path, root: Path) -> Path:
        if isinstance(image, str):
            return image_path(image, root)
        if isinstance(image, dict) and image.get("path") and not image.get("bytes"):
            return image_path(str(image["path"]), root)
        if isinstance(image, dict) and not image.get("bytes") and not image.get("path"):
            raise BadRecord("the image's `bytes` and `path` are both empty: give the image, or drop it from the row")
        if not (hasattr(image, "save") or (isinstance(image, dict) and isinstance(image.get("bytes"), bytes))):
            raise BadRecord(f"an image must be a path, {{bytes, path}} or a PIL image, got {type(image).__name__}")
        out = image_dir / f"{index}.png"
        if not out.exists():
            from PIL import Image

            try:
                pil = image if hasattr(image, "save") else Image.open(io.BytesIO(image["bytes"]))
                pil.convert("RGB").save(out)
            except Exception as exc:  # PIL raises many kinds for bad bytes
                out.unlink(missing_ok=True)
                raise BadRecord(f"the image bytes are not a readable image ({_first_line(exc)})") from None
        return out


@hookimpl
def register_sources(register: Register) -> None:
    register(HfDataset)
