"""The project's docs and code are self-contained: they never send a reader to a file outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["mixlab", "docs", "recipes", "README.md", "scripts", "bench"]

OUTSIDE = re.compile(
    r"(?<![\w./-])(?:\.\./)*shared/"  # a sibling folder of the checkout: shared/design/..., ../shared/...
    r"|\b(?:algorithms|feasibility|ARCHITECTURE|ecosystem)\.md\b"  # design notes that are not in the repository
    r"|\bissue \d+\b|\bthe issue's\b|\bthis (?:wave|session)\b|\bsession's\b"  # the tracker and work sessions
    r"|\bcan_start_another\b|\bgive_back\b"  # the development machines' tools
)
DOC_LINK = re.compile(r"\bdocs/[\w.-]+\.md\b")


def checked_files() -> list[Path]:
    """Tracked files and new ones not yet added (but not ignored) under the checked paths."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *CHECKED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in sorted(set(listed)) if (ROOT / name).is_file()]


def lines_matching(pattern: re.Pattern[str]) -> list[tuple[str, int, str]]:
    found = []
    for path in checked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, archives
        for number, line in enumerate(text.splitlines(), start=1):
            for match in pattern.finditer(line):
                found.append((str(path.relative_to(ROOT)), number, match.group(0)))
    return found


def test_the_checked_files_are_found():
    names = {str(p.relative_to(ROOT)) for p in checked_files()}
    assert {"README.md", "docs/plugins.md", "mixlab/components.py"} <= names


def test_no_reference_to_files_outside_the_repository():
    found = lines_matching(OUTSIDE)
    assert not found, "say what the reader needs in the repository's own docs instead of pointing at:\n" + "\n".join(
        f"  {path}:{number}: {text}" for path, number, text in found
    )


def test_the_outside_pattern():
    for text in (
        "see shared/design/algorithms.md §1",
        "`../shared/papers`",
        "ARCHITECTURE.md §3",
        "feasibility.md",
        "Selection and merging (issue 4)",
        "at the issue's full size",
        "across this session's runs",
        "at the start of this wave",
        "`status` reported `can_start_another: false`",
    ):
        assert OUTSIDE.search(text), text
    for text in (
        "docs/coincide.md",
        "runs/shared/x",
        "a shared cache",
        "shared_dir/",
        "my_algorithms.md",
        "TRL's issue #4339",
        "padding is not the issue",
    ):
        assert not OUTSIDE.search(text), text


def test_every_named_doc_exists():
    missing = [(path, number, name) for path, number, name in lines_matching(DOC_LINK) if not (ROOT / name).is_file()]
    assert not missing, "these name a docs page that does not exist:\n" + "\n".join(
        f"  {path}:{number}: {name}" for path, number, name in missing
    )


def documented_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def undocumented_options(models: dict[str, type], text: str) -> list[str]:
    """``where.option`` for each option of the models that the docs never name (as `option` or `option = ...`)."""
    return [
        f"{where}.{name}"
        for where, model in models.items()
        for name in model.model_fields
        if f"`{name}`" not in text and f"{name} =" not in text
    ]


def test_every_option_of_the_recipe_and_of_the_built_in_plugins_is_documented():
    from pydantic import BaseModel

    from mixlab import sections
    from mixlab.registry import get_registry

    models: dict[str, type] = {
        name: cls
        for name, cls in vars(sections).items()
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == sections.__name__
    }
    for kind, entries in get_registry().entries.items():
        for name, entry in entries.items():
            if entry.cls.__module__.startswith("mixlab."):
                models[f"{kind} {name}"] = entry.cls.Options
    assert len(models) > 15
    text = documented_text()
    assert not undocumented_options(models, text), "document these options in docs/ (recipes.md or the plugin's page)"

    class Made(BaseModel):
        tasks: list[str]
        never_written_down_anywhere: int = 0

    assert undocumented_options({"made": Made}, text) == ["made.never_written_down_anywhere"]
