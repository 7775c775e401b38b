"""The layout's rules, checked: imports flow one way (import-linter contracts in pyproject.toml), classes stay small,
no nested `run` closures."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
]


def lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [*LINT, "--config", str(cwd / "pyproject.toml")], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_import_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_planted_cycle_breaks_the_contracts(tmp_path):
    shutil.copytree(ROOT / "mixlab", tmp_path / "mixlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    store = tmp_path / "mixlab" / "store.py"
    store.write_text(store.read_text() + "\n\ndef _planted():\n    from mixlab import pipeline  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "No import cycles anywhere inside mixlab BROKEN" in result.stdout


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_no_class_is_over_200_lines():
    long = []
    for path in (ROOT / "mixlab").rglob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long


def test_no_nested_run_closures():
    nested = []
    for path in (ROOT / "mixlab").rglob("*.py"):
        for outer in ast.walk(_tree(path)):
            if isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(outer):
                    if inner is not outer and isinstance(inner, ast.FunctionDef) and inner.name == "run":
                        nested.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert not nested, nested
