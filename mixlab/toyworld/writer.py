"""Deterministic file output: PNGs, base64 PNGs, JSON, VLMEvalKit TSVs, the text corpus, and atomic swaps."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from mixlab.errors import UserError


def png_bytes(img: Image.Image) -> bytes:
    """PNG bytes without metadata, so equal images give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_png(img: Image.Image, path: Path) -> None:
    """Write the image as PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(img))


def png_b64(img: Image.Image) -> str:
    """The image as a base64-encoded PNG string (VLMEvalKit's "image" column)."""
    return base64.b64encode(png_bytes(img)).decode("ascii")


def write_json(obj: Any, path: Path) -> None:
    """Stable JSON (key order as built, indent 1, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tsv(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    """A tab-separated file with a header; missing values are empty strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if row.get(c) is None else row[c] for c in columns])


def write_lines(lines: Iterable[str], path: Path) -> None:
    """Unique non-empty lines in first-seen order."""
    seen: dict[str, None] = {}
    for text in lines:
        for line in text.splitlines():
            line = line.strip()
            if line and line != "<image>":
                seen.setdefault(line, None)
    path.write_text("".join(f"{line}\n" for line in seen), encoding="utf-8")


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh temp folder next to out_dir; on success it replaces out_dir in one rename."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as e:
        raise UserError(f"cannot create {out_dir} ({e.strerror or e}): choose a folder you can write to.") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "world")
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
