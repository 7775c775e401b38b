"""``hf_dataset``: chat data with ``messages`` + ``images`` (TRL's vision format) from disk, parquet or JSON lines."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, Source
from mixlab.data import IMAGE_TOKEN, Sample
from mixlab.errors import UserError
from mixlab.plugins.sources.records import BadRecord, ImageCheck, OnError, collect

ROLE_TO_LLAVA = {"user": "human", "assistant": "gpt", "system": None}


class HfDatasetOptions(Options):
    path: str = Field(description="A `save_to_disk` folder, a .parquet file or a .jsonl file, relative to the recipe.")
    split: str = Field("train", description="Split to read when the folder is a DatasetDict.")
    image_root: str | None = Field(None, description="Folder that string image paths are relative to.")
    on_error: OnError = Field("raise", description='"raise": stop at a bad record; "skip": skip and count it.')
    check_images: ImageCheck = Field("open", description='"open" (read each header), "exists", or "none".')
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows.")


def _load(path: Path, split: str):
    import datasets

    if not path.exists():
        raise UserError(f"dataset {path} not found. Check `path` in the recipe.")
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UserError(f"dataset {path} has no split {split!r} (it has {', '.join(ds)}). Set `split`.")
            ds = ds[split]
        return ds
    kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(path.suffix)
    if kind is None:
        raise UserError(
            f"{path}: unsupported file type {path.suffix!r}; use a save_to_disk folder, .parquet or .jsonl."
        )
    return datasets.load_dataset(kind, data_files=str(path), split="train")


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
            parts.append(part.get("text") or "")
        else:
            raise BadRecord(f"unknown content part {part!r:.60}")
    return "\n".join(p for p in parts if p), images


class HfDataset(Source):
    """Rows of ``messages`` (role/content) and ``images``, converted to LLaVA records; image bytes are written out."""

    name = "hf_dataset"
    Options = HfDatasetOptions

    def fingerprint(self) -> str:
        path = self.resolve(self.options.path)
        if not path.exists():
            return "missing"
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        return hashlib.sha256(
            "".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file()).encode()
        ).hexdigest()

    def load(self, ctx) -> list[Sample]:
        path = self.resolve(self.options.path)
        ds = _load(path, self.options.split)
        missing = {"messages"} - set(ds.column_names)
        if missing:
            raise UserError(
                f"{path}: no `messages` column (columns: {', '.join(ds.column_names)}). "
                "mixlab reads TRL's vision format: `messages` + `images`."
            )
        if self.options.limit:
            ds = ds.select(range(min(self.options.limit, len(ds))))
        image_dir = ctx.cache_dir("hf_images", {"source": self.label, "fingerprint": self.fingerprint()})
        root = self.resolve(self.options.image_root) if self.options.image_root else path.parent
        records = [self._record(row, i, image_dir, root) for i, row in enumerate(ds)]
        samples, skipped = collect(
            records, path, image_dir, self.options.check_images, self.options.on_error, self.label
        )
        if skipped:
            ctx.record(skipped=len(skipped))
            ctx.log(f"{self.label}: skipped {len(skipped)} bad rows, e.g. {skipped[0]}")
        return samples

    def _record(self, row: dict[str, Any], index: int, image_dir: Path, root: Path) -> Any:
        try:
            turns, n_images = [], 0
            for message in row["messages"] or []:
                role = ROLE_TO_LLAVA.get(message.get("role"), "?")
                if role is None:
                    continue
                if role == "?":
                    raise BadRecord(f"unknown role {message.get('role')!r}")
                text, count = _text(message.get("content"))
                n_images += count
                turns.append({"from": role, "value": text})
            images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
            if len(images) > 1:
                raise BadRecord("more than one image per sample is not supported")
            record: dict[str, Any] = {"id": str(row.get("id", index)), "conversations": turns}
            if images:
                record["image"] = str(self._image_path(images[0], index, image_dir, root))
            if n_images and not images:
                raise BadRecord("a message has an image part but the row has no image")
            return record
        except BadRecord as exc:
            return {"id": row.get("id", index), "conversations": None, "_error": str(exc)}

    @staticmethod
    def _image_path(image: Any, index: int, image_dir: Path, root: Path) -> Path:
        if isinstance(image, str):
            return (root / image).resolve()
        if isinstance(image, dict) and image.get("path") and not image.get("bytes"):
            return (root / image["path"]).resolve()
        out = image_dir / f"{index}.png"
        if not out.exists():
            from PIL import Image

            pil = image if hasattr(image, "save") else Image.open(io.BytesIO(image["bytes"]))
            pil.convert("RGB").save(out)
        return out


@hookimpl
def register_sources(register):
    register(HfDataset)
