"""The type checker stays green: mypy over mixlab/ at the strictness configured in pyproject.toml ([tool.mypy]).

A cold run (no .mypy_cache) takes tens of seconds, most of it reading torch's and transformers' types; later runs
reuse the cache and take a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"mypy found problems (exit {result.returncode}):\n{result.stdout}{result.stderr}"
