"""Reusable work that outlives a stage: content identities of samples and checkpoints, and resumable per-item
caches (JSON lines for small values, .npz parts for vectors) that scorers and evaluators append to as they go."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.data import Sample


def sample_key(sample: Sample) -> str:
    """``<id>#<hash>``: the hash covers the conversation, the image path and the image file's size."""
    image = sample.get("image")
    size = os.path.getsize(image) if image and os.path.exists(image) else None
    material = json.dumps([sample["conversations"], image, size], sort_keys=True, ensure_ascii=False)
    return f"{sample['id']}#{hashlib.sha256(material.encode()).hexdigest()[:16]}"


def checkpoint_hash(model_dir: Path) -> str:
    """Content hash of a checkpoint: small files whole, large weight files by size + first and last 4 MiB."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(model_dir)}:{f.stat().st_size}".encode())
        with open(f, "rb") as fh:
            if f.stat().st_size <= 64 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(4 << 20))
                fh.seek(-(4 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()


class JsonlCache:
    """Per-item values in a JSON-lines file ({"key", "value"}), appended per batch and fsynced: a crash loses at most
    the batch being written, and a line it cut is ignored on reading."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.items: dict[str, Any] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if isinstance(record, dict) and "key" in record:
                    self.items[record["key"]] = record.get("value")

    def add(self, pairs: Iterable[tuple[str, Any]]) -> None:
        with open(self.path, "a") as f:
            for key, value in pairs:
                self.items[key] = value
                f.write(json.dumps({"key": key, "value": value}) + "\n")
            f.flush()
            os.fsync(f.fileno())


class ArrayCache:
    """Per-sample vectors in one ``part-*.npz`` file per batch (keys + rows), each written atomically."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.items: dict[str, np.ndarray] = {}
        self.parts = 0
        for part in sorted(self.folder.glob("part-*.npz")):
            self.parts += 1
            try:
                with np.load(part) as data:
                    for key, row in zip(data["keys"].tolist(), data["rows"], strict=True):
                        self.items[key] = row
            except (OSError, ValueError, KeyError):  # unreadable part: its samples are simply recomputed
                continue

    def add(self, keys: list[str], rows: np.ndarray) -> None:
        if not keys:
            return
        name = f"part-{self.parts:06d}-{os.getpid()}"
        tmp = self.folder / f"{name}.npz.tmp"  # not matched by part-*.npz until renamed
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys), rows=rows)
        tmp.replace(self.folder / f"{name}.npz")
        self.parts += 1
        for key, row in zip(keys, rows, strict=True):
            self.items[key] = row
