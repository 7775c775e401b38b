"""The run directory: content-addressed stage folders, atomic writes, DONE markers and events.jsonl."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixlab.errors import UserError
from mixlab.paths import expand_user

if TYPE_CHECKING:
    from mixlab.data import Sample

SAMPLES_FILE = "samples.parquet"


def content_text(obj: Any) -> str:
    """A canonical JSON rendering (keys sorted; paths and other objects as str)."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def tree_digest(root: Path) -> str:
    """A hash of every file's path and bytes under ``root`` (``__pycache__`` left out)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def content_hash(obj: Any) -> str:
    """sha256 of ``content_text(obj)``."""
    return hashlib.sha256(content_text(obj).encode()).hexdigest()


EVENTS_FILE = "events.jsonl"  # one JSON object per line: what a run did, appended as it goes
FRESH_FILE = "fresh.json"  # the patterns and progress of a `--fresh` run until it ends
LOCK_FILE = ".lock"  # held by the `mixlab run` working in the folder


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write_text`` for bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def folder_problem(target: Path, role: str, instead: str = "choose another folder") -> str | None:
    """What keeps mixlab from creating and writing the folder target (`role` says what it is for): a file in its
    place or above it, no write permission in its nearest existing folder; or None. `instead` is what to do."""
    target = expand_user(target)
    try:
        for folder in (target, *target.parents):
            if not folder.exists():
                continue
            if not folder.is_dir():
                what = role if folder == target else f"a parent of {role} {target}"
                return f"{folder} is a file, but it would be {what}: remove it or {instead}."
            if not os.access(folder, os.W_OK | os.X_OK):
                return f"cannot write in {folder} (permission denied): {instead}."
            return None
    except OSError as exc:  # a name too long
        return f"cannot use {target} ({exc.strerror or exc}): {instead}."
    return None


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_")[:60] or "stage"


class Store:
    """Stage folders under run_dir/stages, keyed by a content hash; DONE is written last."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the run directory {run_dir} ({exc.strerror or exc}): choose another output directory."
            ) from None
        self.events_path = run_dir / EVENTS_FILE

    def stage_dir(self, name: str, key: str) -> Path:
        return self.run_dir / "stages" / f"{slug(name)}-{key[:12]}"

    def selection_file(self, arm: str) -> Path:
        """The samples an arm trains on (written once its selection is done, or at the end of a run over a finished
        run's folder)."""
        path = self.run_dir / "selections" / f"{slug(arm)}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def cache_dir(self, kind: str, key: str) -> Path:
        path = self.run_dir / "cache" / slug(kind) / key[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def is_done(stage_dir: Path) -> bool:
        return (stage_dir / "DONE").is_file() and (stage_dir / "result.json").is_file()

    @staticmethod
    def finish(stage_dir: Path, result: dict[str, Any]) -> None:
        atomic_write_json(stage_dir / "result.json", result)
        atomic_write_text(stage_dir / "DONE", time.strftime("%Y-%m-%dT%H:%M:%S\n"))

    @staticmethod
    def reopen(stage_dir: Path) -> None:
        """Mark a finished stage unfinished before it is run again (a crash then leaves nothing to trust), with every
        finished part inside it (the shards of a sharded scoring), which would otherwise be kept."""
        for marker in [stage_dir / "DONE", *stage_dir.glob("*/**/DONE")]:
            marker.unlink(missing_ok=True)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for one `mixlab run`: a second run on it stops with a message instead of training
        into the same stage folders. The operating system drops the lock when the process ends, killed or not."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock
            yield
            return
        path = self.run_dir / LOCK_FILE
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(
                    f"{self.run_dir} is in use by another `mixlab run` ({holder}): wait for it to end, or give "
                    "another --output-dir."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def keep_recipe(self, recipe: Path) -> None:
        """RUN_DIR/recipe.toml: the recipe the run's files come from (`compare` and `export` read it)."""
        target = self.run_dir / "recipe.toml"
        if recipe.resolve() != target.resolve():
            atomic_write_bytes(target, recipe.read_bytes())

    def pending_fresh(self) -> tuple[list[str], set[str]]:
        """The ``--fresh`` patterns of a run that stopped before its end, and the stages it had already run again."""
        try:
            data = json.loads((self.run_dir / FRESH_FILE).read_text())
            return [str(p) for p in data["patterns"]], {str(k) for k in data["refreshed"]}
        except (OSError, ValueError, KeyError, TypeError):
            return [], set()

    def save_fresh(self, patterns: Sequence[str], refreshed: set[str]) -> None:
        """What a ``--fresh`` run has still to do, kept until it ends: a crash does not turn its remaining stages
        back into cached ones (an evaluation of the model it replaced)."""
        atomic_write_json(self.run_dir / FRESH_FILE, {"patterns": list(patterns), "refreshed": sorted(refreshed)})

    def clear_fresh(self) -> None:
        (self.run_dir / FRESH_FILE).unlink(missing_ok=True)

    @staticmethod
    def sweep(stage_dir: Path) -> None:
        """Remove the temp files a killed process left half written in a stage folder about to be run."""
        for tmp in stage_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    @staticmethod
    def result(stage_dir: Path) -> dict[str, Any]:
        return json.loads((stage_dir / "result.json").read_text())

    def event(self, **fields: Any) -> None:
        """Append one JSON object to events.jsonl (flushed at once, so a crash keeps the history)."""
        fields = {"time": round(time.time(), 3), **fields}
        with open(self.events_path, "a") as f:
            f.write(json.dumps(fields, default=str) + "\n")


def save_samples(path: Path, samples: Sequence[Mapping[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(samples), tmp)
    os.replace(tmp, path)


def load_samples(path: Path) -> list[Sample]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
