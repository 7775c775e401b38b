"""The example third-party package (examples/mixlab-shortest): its own tests pass, and pip-installed, it shows up
and runs from a recipe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests import fakes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mixlab-shortest"

DRIVER = """
import sys
from mixlab import registry
from tests import fakes
registry.register_plugin(fakes)
from mixlab.cli import main
main()
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    return {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{ROOT}"}


def mixlab(env, cwd, *args):
    return subprocess.run([sys.executable, "-c", DRIVER, *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_the_example_package_own_tests_pass():
    """Its tests/ folder, run as its author runs it (the package's pyproject puts it on the path, no install)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b[1-9]\d* passed\b", proc.stdout) and " failed" not in proc.stdout, proc.stdout


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", (ROOT / "docs" / "plugins.md").read_text(), re.M | re.S)


def test_the_plugin_docs_code_runs_as_shown(tmp_path):
    """docs/plugins.md: each Python block runs on its own, its test files pass, and the blocks that show the example
    package's files show them as they are."""
    files = {}
    for i, block in enumerate(code_blocks("python")):
        named = re.fullmatch(r"# ([\w/]+\.py)", block.split("\n", 1)[0])
        path = named.group(1) if named else f"snippet_{i}.py"
        files[path] = block
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(block)
    for path in ("mixlab_shortest/plugin.py", "tests/test_shortest.py"):
        shown = files[path].split("\n", 1)[1]
        assert shown == (EXAMPLE / path).read_text(), f"docs/plugins.md shows an outdated {path}: copy it again"
    modules = [p for p in files if not p.startswith("tests/")]
    run = "import runpy, sys\nfor path in sys.argv[1:]:\n    runpy.run_path(path)"
    proc = subprocess.run([sys.executable, "-c", run, *modules], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for block in code_blocks("toml"):
        tomllib.loads(block)


def test_listed_by_plugins_command(installed):
    proc = subprocess.run(
        [sys.executable, "-m", "mixlab.cli", "plugins", "--json"],
        env=installed,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)}
    assert rows[("scorer", "answer_length")]["package"] == "mixlab-shortest"
    assert rows[("selector", "shortest")]["version"] == "0.1.0"
    assert rows[("command", "shortest-hello")]["package"] == "mixlab-shortest"
    hello = subprocess.run(
        [sys.executable, "-m", "mixlab.cli", "shortest-hello"], env=installed, capture_output=True, text=True
    )
    assert hello.stdout.strip() == "mixlab-shortest is loaded"


def test_allowlist_excludes_it(installed):
    env = {**installed, "MIXLAB_LOAD_PLUGINS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "mixlab.cli", "plugins", "--json"], env=env, capture_output=True, text=True, check=True
    )
    assert "answer_length" not in proc.stdout


def test_runs_from_a_recipe(installed, tmp_path):
    text = fakes.RECIPE.replace(
        '[scorers.quality]\ntype = "fake_quality"',
        '[scorers.quality]\ntype = "fake_quality"\n\n[scorers.length]\ntype = "answer_length"',
    )
    text = text.replace(
        "[selectors.best]",
        '[selectors.short]\ntype = "shortest"\nscorers = ["length"]\nfraction = 0.25\n\n[selectors.best]',
    )
    text = text.replace('selector = "best"', 'selector = "short"')
    recipe = fakes.write_recipe(tmp_path, text)
    proc = mixlab(installed, tmp_path, "run", str(recipe), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "runs" / "fake" / "report.json").read_text())
    assert report["arms"]["curated"]["n_samples"] == 5  # 25% of 20
    assert "score:length" in [s["name"] for s in report["stages"]]


def test_broken_plugin_package_gives_one_clear_message(tmp_path):
    pkg = tmp_path / "broken"
    (pkg / "mixlab_broken").mkdir(parents=True)
    (pkg / "mixlab_broken" / "__init__.py").write_text("raise ImportError('missing dependency foo')\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "mixlab-broken"\nversion = "0.0.1"\n'
        '[project.entry-points.mixlab]\nbroken = "mixlab_broken"\n'
    )
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(pkg)], check=True
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-m", "mixlab.cli", "plugins"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "plugin package 'mixlab-broken'" in proc.stderr and "missing dependency foo" in proc.stderr
    assert "Traceback" not in proc.stderr
