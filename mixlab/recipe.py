"""TOML recipes: read (UTF-8, located syntax errors), parsed with tomllib, validated (mixlab.validation) into a
``Recipe``; every problem at once, each located to file:line with the key path and a hint."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixlab.errors import UserError
from mixlab.locate import key_lines, line_of
from mixlab.registry import Registry, did_you_mean, get_registry
from mixlab.section_references import cross_references, provided_sources
from mixlab.sections import ArmSection, ModelSection, RunSection, Section
from mixlab.setting_checks import (
    check_benchmark_names,
    check_executor,
    check_model_path,
    check_output_dir,
    check_overrides,
    check_toy_worlds,
)
from mixlab.textfiles import read_text
from mixlab.validation import TOP_LEVEL, Problem, Validator, unique_problems


@dataclass
class Recipe:
    path: Path
    text: str
    data: dict[str, Any]
    run: RunSection
    model: ModelSection
    sources: dict[str, Section]
    scorers: dict[str, Section]
    selectors: dict[str, Section]
    arms: dict[str, ArmSection]
    trainer: Section
    evaluators: dict[str, Section]
    soup: Section | None
    provided: dict[str, str] = field(default_factory=dict)  # source name → section label providing it

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir) if self.run.output_dir else Path("runs") / self.run.name


class RecipeError(UserError):
    """All the problems of one recipe, each located."""

    def __init__(self, file: Path, problems: list[Problem], lines: dict[tuple, int]):
        self.problems = problems
        located = sorted(((line_of(p.path, lines) or 0, p) for p in problems), key=lambda lp: lp[0])
        rendered = []
        for line, p in located:
            where = f"{file}:{line}" if line else str(file)
            key = ".".join(str(k) for k in p.path) or "(top level)"
            rendered.append(f"{where}: {key}: {p.message}")
        self.lines_rendered = rendered
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        super().__init__(f"{count} in recipe {file}:\n" + "\n".join("  " + r for r in rendered))


def _read_text(path: Path, what: str) -> str:
    """A file's text as UTF-8, or a UserError naming the file (and the line of the first bad byte)."""
    return read_text(
        path,
        what,
        "give the path of the file itself.",
        f"Save the {what} as UTF-8 (e.g. with `iconv -f latin1 -t utf-8`).",
    )


def load_recipe(
    path: str | Path, registry: Registry | None = None, *, check_paths: bool = True, own_output_dir: bool = True
) -> Recipe:
    """Parse and validate a recipe; raise RecipeError listing every problem.

    With ``check_paths`` (the default) the files and folders it names are checked too, with each plugin's
    ``check()``; without, only the recipe itself (for a recipe written for another machine). ``own_output_dir``
    False: the run goes elsewhere (``mixlab run --output-dir``), so the recipe's own run directory is not checked.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"recipe {path} not found. Give the path of a .toml recipe (see recipes/).")
    text = _read_text(path, "recipe")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"line (\d+)", str(e))
        where = f"{path}:{found.group(1)}" if found else str(path)
        raise UserError(f"{where}: TOML syntax error: {e}. Fix the syntax at that line.") from None
    validator = Validator(data, registry or get_registry(), path, check_paths, own_output_dir)
    return validate_data(path, text, data, validator)


def validate_data(path: Path, text: str, data: dict[str, Any], v: Validator) -> Recipe:
    for key in data:
        if key not in TOP_LEVEL:
            v.add((key,), f"unknown section.{did_you_mean(key, TOP_LEVEL)}")
    for required in ("run", "model", "arms"):
        if required not in data:
            v.add((), f"missing the [{required}] section: add it (docs/recipes.md describes every section).")
    run = v.model(("run",), RunSection, data["run"]) if "run" in data else None
    model = v.model(("model",), ModelSection, data["model"]) if "model" in data else None
    sources = v.plugin_table("sources")
    scorers = v.plugin_table("scorers")
    selectors = v.plugin_table("selectors")
    evaluators = v.plugin_table("evaluators")
    trainer = v.plugin("trainer", ("trainer",), data.get("trainer", {}), default_type="llava_sft")
    soup = v.plugin("soup", ("soup",), data["soup"], default_type="soup") if "soup" in data else None
    arms: dict[str, ArmSection] = {}
    raw_arms = v.table("arms") if "arms" in data else {}
    for label, body in raw_arms.items():
        arm = v.model(("arms", label), ArmSection, body)
        if arm:
            arms[label] = arm
        else:
            v.broken["arms"].add(label)
    if "arms" in data and isinstance(data["arms"], dict) and not raw_arms:
        v.add(("arms",), 'no arms: add at least one [arms.<name>] table with `sources = ["<source>", ...]`.')
    raw_evaluators = data.get("evaluators", {})
    if isinstance(raw_evaluators, dict) and not raw_evaluators:
        v.add(
            ("evaluators",) if "evaluators" in data else (),
            "no evaluator: add an [evaluators.<name>] section (arms need at least one evaluator).",
        )

    provided = provided_sources(v, sources)
    cross_references(v, run, model, sources, provided, scorers, selectors, arms, soup)
    check_toy_worlds(v, {"sources": sources, "evaluators": evaluators})
    if run and not v.broken["evaluators"]:  # names known without files (the toy world's) are checked anyway
        check_benchmark_names(v, run, evaluators, selectors)
    if run and v.check_paths and v.own_output_dir:
        check_output_dir(v, run)
    if run and v.check_paths:
        check_executor(v, run)
    if model and model.path is not None and v.check_paths:
        check_model_path(v, model.path)
    if trainer:
        check_overrides(v, trainer, ("model", "align", "trainer"), model.align.trainer if model and model.align else {})
        for label, arm in arms.items():
            check_overrides(v, trainer, ("arms", label, "trainer"), arm.trainer)
            check_overrides(v, trainer, ("arms", label, "align", "trainer"), arm.align.trainer if arm.align else {})

    if v.problems:
        raise RecipeError(path, unique_problems(v.problems), key_lines(text))
    assert run and model and trainer
    return Recipe(
        path=path,
        text=text,
        data=data,
        run=run,
        model=model,
        sources=sources,
        scorers=scorers,
        selectors=selectors,
        arms=arms,
        trainer=trainer,
        evaluators=evaluators,
        soup=soup,
        provided=provided,
    )
