"""Rich progress bars shared by every stage, mirrored (throttled) into events.jsonl."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

LOG_WIDTH = 160
"""Columns of the tables when stderr is a file or a pipe (a log), where rich would otherwise assume 80."""
console = Console(stderr=True, emoji=False)  # a message's ":cat:" stays text
if not console.is_terminal and not os.environ.get("COLUMNS"):
    console.width = LOG_WIDTH


class ProgressBoard:
    """One rich Progress display for the whole run; ``task(...)`` yields an ``advance(n=1)`` callable."""

    def __init__(self, on_event: Callable[..., None] | None = None, enabled: bool = True):
        self.on_event = on_event
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )

    def __enter__(self) -> ProgressBoard:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        task_id = self.progress.add_task(description, total=total)
        last = [0.0]

        def advance(n: int = 1, *, completed: int | None = None) -> None:
            if completed is not None:
                self.progress.update(task_id, completed=completed)
            else:
                self.progress.advance(task_id, n)
            now = time.monotonic()
            if self.on_event and now - last[0] > 2.0:
                last[0] = now
                done = self.progress.tasks[self.progress.task_ids.index(task_id)].completed
                self.on_event(event="progress", task=description, completed=done, total=total)

        try:
            yield advance
        finally:
            self.progress.remove_task(task_id)

    def log(self, message: str) -> None:
        console.print(message)


def quiet_libraries() -> None:
    """mixlab shows its own progress: silence the libraries' bars and advisory warnings during a run."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.disable_progress_bar()
