"""The plugin contract: every hook mixlab calls. Built-in components register through these too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("mixlab")

Register = Callable[[type], None]


@hookspec
def register_sources(register: Register) -> None:
    """Register data source classes (they load samples into the pool)."""


@hookspec
def register_scorers(register: Register) -> None:
    """Register scorer classes (they compute per-sample scores or embeddings)."""


@hookspec
def register_selectors(register: Register) -> None:
    """Register selector classes (they choose which samples an arm trains on)."""


@hookspec
def register_trainers(register: Register) -> None:
    """Register trainer classes (they fine-tune a model into a checkpoint directory)."""


@hookspec
def register_evaluators(register: Register) -> None:
    """Register evaluator classes (they score a checkpoint on benchmarks)."""


@hookspec
def register_mergers(register: Register) -> None:
    """Register merger classes (they combine checkpoints, e.g. a model soup)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands or groups to the ``mixlab`` command line."""
