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
from mixlab.paths import expand_user


def sample_key(sample: Sample) -> str:
    """``<id>#<hash>``: the hash covers the conversation, the image path and the image file's size."""
    image = sample.get("image")
    size = os.path.getsize(image) if image and os.path.exists(image) else None
    material = json.dumps([sample["conversations"], image, size], sort_keys=True, ensure_ascii=False)
    return f"{sample['id']}#{hashlib.sha256(material.encode()).hexdigest()[:16]}"


_DIGESTS: dict[str, tuple[int, int, str]] = {}
_now_ns = time.time_ns
KEPT_DIGEST_BYTES = 64 * 2**20
"""Files at least this large (model weights) have their digests kept across processes (`kept_digests_path`)."""


def kept_digests_path() -> Path:
    """Where digests of large files are kept between processes: ``$MIXLAB_CACHE_DIR/digests.jsonl``, by default
    under ``$XDG_CACHE_HOME/mixlab`` (``~/.cache/mixlab``)."""
    folder = os.environ.get("MIXLAB_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "mixlab"
    return expand_user(folder) / "digests.jsonl"


def _file_identity(path: str, stat: os.stat_result) -> str:
    """The file as the OS sees it: device, inode, size, modification and change times (any write changes the
    change time, and no tool sets it back)."""
    return json.dumps([path, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns])


def _kept_digest(identity: str) -> str | None:
    try:
        lines = kept_digests_path().read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if isinstance(record, dict) and record.get("file") == identity and isinstance(record.get("digest"), str):
            return record["digest"]
    return None


def _keep_digest(identity: str, digest: str) -> None:
    """One appended line (atomic for lines this short); a cache folder that cannot be written is skipped."""
    path = kept_digests_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"file": identity, "digest": digest}) + "\n")
    except OSError:
        pass


def file_digest(path: str | os.PathLike[str]) -> str:
    """blake2b-128 of a file's bytes (hex), remembered in this process by path, size and modification time; a file
    modified in the last two seconds is read again (a second edit within one timestamp tick keeps its mtime). Files
    of `KEPT_DIGEST_BYTES` or more (weights, read whole at every digest) are also remembered across
    processes, by device, inode, size, modification and change times (`kept_digests_path`)."""
    path = os.path.abspath(os.fspath(path))
    stat = os.stat(path)
    known = _DIGESTS.get(path)
    settled = _now_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > 2_000_000_000
    if settled and known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
        return known[2]
    kept = settled and stat.st_size >= KEPT_DIGEST_BYTES
    identity = _file_identity(path, stat)
    digest = _kept_digest(identity) if kept else None
    if digest is None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
        if kept:
            _keep_digest(identity, digest)
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
