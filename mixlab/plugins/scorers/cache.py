"""Shared pieces of the model-based scorers: which model to score with, per-sample cache keys, resumable caches."""

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


def model_settings(model_dir: Path) -> dict[str, Any]:
    """Cache-key material for scores from a checkpoint: its content hash and the device kind (bf16 on CUDA, fp32 on
    CPU give slightly different numbers)."""
    from mixlab.models.loading import device_kind
    from mixlab.plugins.evaluators.benchmarks import checkpoint_hash

    return {"model": checkpoint_hash(model_dir), "device": device_kind()}


class JsonlCache:
    """Per-sample values in a JSON-lines file ({"key", "value"}), appended per batch; a cut line is ignored."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.items: dict[str, Any] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                self.items[record["key"]] = record["value"]

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
