"""Paths as users write them: ``~`` expanded where the home folder is known."""

from __future__ import annotations

from pathlib import Path


def expand_user(path: str | Path) -> Path:
    """``Path(path).expanduser()``, or the path as written when its ``~user`` has no home folder here (the check of
    the path that follows then names it as missing, instead of a crash)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)
