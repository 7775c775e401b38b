"""The stage memoiser: run a stage's body once per content key, keep what finished, resume after a crash.

A stage's folder is ``stages/<ident>-<key>``; its ``DONE`` marker is written after its ``result.json`` and
artifacts, so a rerun trusts only finished work. ``fresh`` names stages to run again even when finished (``*``:
all); a stage whose material mentions the key of a stage run fresh in this run is run fresh too, so what depends on
a refreshed stage follows it. A ``--fresh`` run that stops before its end is taken up by the next run on the
folder (``resume_fresh``).
"""

from __future__ import annotations

import fnmatch
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixlab.engine.keys import stage_key
from mixlab.errors import UserError
from mixlab.results import StageEntry
from mixlab.store import Store, content_text

RECORD = "_record"  # facts a stage body attached (ctx.record), kept in result.json for cached reruns
SECONDS = "_seconds"  # a worker's own timing of a stage it finished


class Engine:
    """Runs stages through the store; collects one ``StageEntry`` per stage asked for, in order."""

    def __init__(self, store: Store, fresh: tuple[str, ...] = (), on_event: Callable[..., None] | None = None):
        self.store = store
        self.fresh = fresh
        self.event = on_event or store.event
        self.entries: list[StageEntry] = []
        self.keys: dict[str, str] = {}  # stage name → key
        self._refreshed: set[str] = set()  # short keys of the stages run again because of `fresh`
        self._by_worker: set[str] = set()  # short keys of the stages a worker finished in this run
        self._current: StageEntry | None = None
        self._upstream: list[str] = []  # short keys of stages whose output the stages being asked for are made from

    def folder(self, ident: str, material: Any) -> tuple[str, Path]:
        """The key and folder of a stage (the only place both are computed)."""
        key = stage_key(ident, material)
        return key, self.store.stage_dir(ident, key)

    def resume_fresh(self) -> list[str]:
        """Take up a ``--fresh`` run that stopped before its end (its patterns join this run's, and the stages it
        already ran again stay done); returns its patterns. Called once, as the run starts."""
        patterns, refreshed = self.store.pending_fresh()
        self.fresh = tuple(dict.fromkeys([*patterns, *self.fresh]))
        self._refreshed |= refreshed
        if self.fresh:
            self.store.save_fresh(self.fresh, self._refreshed)
        return patterns

    def _mark_refreshed(self, short: str) -> None:
        self._refreshed.add(short)
        self.store.save_fresh(self.fresh, self._refreshed)

    def must_refresh(self, name: str, material: Any) -> bool:
        """Whether ``--fresh`` asks for this stage, directly or through a stage it depends on."""
        if not self.fresh:
            return False
        if any(pattern == "*" or fnmatch.fnmatchcase(name, pattern) for pattern in self.fresh):
            return True
        if not self._refreshed:
            return False
        text = content_text(material) + " ".join(self._upstream)
        return any(key in text for key in self._refreshed)

    def reusable(self, name: str, material: Any, stage_dir: Path) -> bool:
        """A finished folder that ``--fresh`` does not ask to redo. One it asks to redo loses its DONE marker and
        those of its finished parts (a sharded scoring's shards), finished or not."""
        short = stage_dir.name[-12:]
        if short in self._refreshed or short in self._by_worker or not self.must_refresh(name, material):
            return self.store.is_done(stage_dir)
        self.store.reopen(stage_dir)
        self._mark_refreshed(short)
        return False

    def stage(
        self, name: str, material: Any, body: Callable[[Path], dict[str, Any]], kind: str | None = None
    ) -> tuple[dict[str, Any], Path]:
        """Run ``body(stage_dir)`` unless a finished stage with the same key exists; return its result and folder.

        With ``kind`` (trainings, evaluations) the key and folder depend on the material only, not on the name, so
        the same training asked for under two names (an Individual Select candidate and an arm) runs once.
        """
        ident = kind or name
        key, stage_dir = self.folder(ident, material)
        self.keys[name] = key
        entry = StageEntry(name=name, status="cached", seconds=0.0, key=key[:12])
        if self.reusable(name, material, stage_dir):
            result = self.store.result(stage_dir)
            entry.record.update(result.get(RECORD, {}))
            if SECONDS in result and stage_dir.name[-12:] in self._by_worker:
                entry.status, entry.seconds = "done", float(result[SECONDS])  # finished just now by a worker
            self.entries.append(entry)
            self.event(event="end", stage=name, status=entry.status, seconds=entry.seconds)
            return result, stage_dir
        stage_dir.mkdir(parents=True, exist_ok=True)
        self.store.sweep(stage_dir)
        self.event(event="start", stage=name, key=key[:12])
        start = time.perf_counter()
        try:
            with self._within(entry):
                result = body(stage_dir)
        except BaseException as exc:
            entry.status, entry.seconds = "failed", round(time.perf_counter() - start, 3)
            self.entries.append(entry)
            self.event(event="end", stage=name, status="failed", error=f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, UserError):
                (stage_dir / "error.txt").write_text(traceback.format_exc())
            raise
        entry.status, entry.seconds = "done", round(time.perf_counter() - start, 3)
        result[RECORD] = dict(entry.record)
        self.store.finish(stage_dir, result)
        if self.fresh:
            self._mark_refreshed(key[:12])
        self.entries.append(entry)
        self.event(event="end", stage=name, status="done", seconds=entry.seconds)
        return result, stage_dir

    def finished_elsewhere(self, stage_dir: Path) -> None:
        """A worker just finished this folder: report it as done (with the worker's time), not as cached."""
        self._by_worker.add(stage_dir.name[-12:])
        if self.fresh:
            self._mark_refreshed(stage_dir.name[-12:])

    @contextmanager
    def downstream_of(self, name: str) -> Iterator[None]:
        """Stages asked for inside are made from stage ``name``'s output even where their key does not say so (a
        training keyed by its samples, which a selection chose): ``fresh`` on ``name`` reaches them too."""
        self._upstream.append(self.keys.get(name, "")[:12])
        try:
            yield
        finally:
            self._upstream.pop()

    @contextmanager
    def _within(self, entry: StageEntry) -> Iterator[None]:
        outer, self._current = self._current, entry
        try:
            yield
        finally:
            self._current = outer

    def record(self, **info: Any) -> None:
        """Attach facts to the stage being run (they go to report.json)."""
        if self._current is not None:
            self._current.record.update(info)

    def annotate(self, name: str, **info: Any) -> None:
        """Attach facts to the latest entry of stage ``name``, finished or cached: values derived from its result
        under this run's settings, which its key does not cover."""
        entry = next((e for e in reversed(self.entries) if e.name == name), None)
        if entry is not None:
            entry.record.update(info)
