"""Reusable work that outlives a stage: content identities of samples and checkpoints, and resumable per-item
caches (JSON lines for small values, .npz parts for vectors) that scorers and evaluators append to as they go."""

from __future__ import annotations

import hashlib
import json
import os
import time
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


_DIGESTS: dict[str, tuple[int, int, str]] = {}


def file_digest(path: str | os.PathLike[str]) -> str:
    """blake2b-128 of a file's bytes (hex), remembered in this process by path, size and modification time; a file
    modified in the last two seconds is read again (a second edit within one timestamp tick keeps its mtime)."""
    path = os.fspath(path)
    stat = os.stat(path)
    known = _DIGESTS.get(path)
    settled = time.time_ns() - stat.st_mtime_ns > 2_000_000_000
    if settled and known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
        return known[2]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    _DIGESTS[path] = (stat.st_size, stat.st_mtime_ns, digest)
    return digest


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Cache-key material for input files: JSON of [path, content digest] for each file, and for each file under a
    folder; a path that is neither is left out (the component reports it when it runs)."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path).resolve()
        found |= {f for f in path.rglob("*") if f.is_file()} if path.is_dir() else ({path} if path.is_file() else set())
    return json.dumps([[str(f), file_digest(f)] for f in sorted(found)])


def checkpoint_hash(model_dir: Path) -> str:
    """Content hash of a checkpoint: every file's relative path and the digest of all its bytes (`file_digest`, so a
    process reads each file once). Weights are hashed whole: two fine-tunes of one large model can differ only in
    the middle of their weight file (a LoRA merge leaves the output head and the vision tower as they were).
    "missing" for a path that is not a folder (the stage that loads it reports that)."""
    if not Path(model_dir).is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(model_dir)}:{file_digest(f)}\n".encode())
    return h.hexdigest()


class JsonlCache:
    """Per-item values in a JSON-lines file ({"key", "value"}), appended per batch and fsynced: a crash loses at most
    the batch being written, and a line it cut is ignored on reading."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.items: dict[str, Any] = {}
        self.torn = False  # the file ends in a line a crash cut: the next batch starts on a line of its own
        if self.path.exists():
            text = self.path.read_text()
            self.torn = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if isinstance(record, dict) and "key" in record:
                    self.items[record["key"]] = record.get("value")

    def add(self, pairs: Iterable[tuple[str, Any]]) -> None:
        with open(self.path, "a") as f:
            if self.torn:
                f.write("\n")
                self.torn = False
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
