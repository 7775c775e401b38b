"""TOML recipes: parsed with tomllib, validated with pydantic (core sections and each plugin's own options).

Validation collects every problem at once; each is located to file:line with the key path and a hint.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, model_validator

from mixlab.components import Component, Options
from mixlab.errors import UserError
from mixlab.executors import ExecutorSection
from mixlab.locate import key_lines, line_of
from mixlab.registry import Registry, did_you_mean, get_registry


class RunSection(Options):
    """[run]: settings of the whole run."""

    name: str = Field(description="Run name; the default output directory is runs/<name>.")
    seed: int = Field(0, description="Seed for every random choice (data order, init, sampling).")
    output_dir: str | None = Field(None, description="Run directory (relative to the working directory).")
    executor: ExecutorSection = Field(
        default_factory=ExecutorSection,
        description="Where trainings run ([run.executor]); results do not depend on it.",
    )


class TinyModel(Options):
    """[model.tiny]: the size of the tiny LLaVA built from config."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    text_hidden: int = 128
    layers: int = 2
    heads: int = 4
    vocab_size: int = 512
    vision_pretrain_steps: int = Field(
        600,
        ge=0,
        description="Supervised pretraining steps of the vision tower on labelled toy scenes (the tiny stand-in "
        "for CLIP; docs/toyworld.md). 0: a random-init tower.",
    )


class AlignSection(Options):
    """[model.align]: train the base model once on these sources before any arm (cached)."""

    sources: list[str] = Field(min_length=1, description="Sources to align on (e.g. captions).")
    trainer: dict[str, Any] = Field(default_factory=dict, description="Trainer options overridden for alignment.")


class ModelSection(Options):
    """[model]: the base model every arm fine-tunes."""

    preset: Literal["tiny"] | None = Field(None, description='"tiny": a tiny LLaVA built from config (no download).')
    path: str | None = Field(None, description="A local llava-hf format model directory.")
    tiny: TinyModel = Field(default_factory=TinyModel)
    align: AlignSection | None = None

    @model_validator(mode="after")
    def _one_model(self) -> ModelSection:
        if (self.preset is None) == (self.path is None):
            raise ValueError('give exactly one of `preset = "tiny"` or `path = "<model dir>"`')
        return self


class ArmSection(Options):
    """[arms.<name>]: one training set to compare: sources, an optional selector, then train and evaluate."""

    sources: list[str] = Field(min_length=1, description="Sources whose samples form the arm's pool.")
    selector: str | None = Field(None, description="A [selectors.<name>] section choosing from that pool.")
    trainer: dict[str, Any] = Field(default_factory=dict, description="Trainer options overridden for this arm.")


CORE_KEYS: dict[str, dict[str, Any]] = {
    # section → core keys the pipeline reads (everything else is the plugin's own options)
    "sources": {"type": str, "category": str},
    "scorers": {"type": str, "sources": list, "reference_arm": str},
    "selectors": {"type": str, "scorers": list},
    "trainer": {"type": str},
    "evaluators": {"type": str},
    "soup": {"type": str, "arms": list, "candidates": str},
}
KIND_OF_SECTION = {
    "sources": "source",
    "scorers": "scorer",
    "selectors": "selector",
    "trainer": "trainer",
    "evaluators": "evaluator",
    "soup": "merger",
}
TOP_LEVEL = ("run", "model", "sources", "scorers", "selectors", "arms", "trainer", "evaluators", "soup")


@dataclass
class Section:
    """A validated plugin section: its label, plugin class, options and core keys."""

    label: str
    type: str
    cls: type[Component]
    options: BaseModel
    core: dict[str, Any]
    raw: dict[str, Any]
    base_dir: Path

    def build(self) -> Any:
        return self.cls(self.options, self.label, self.base_dir)


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


@dataclass
class Problem:
    path: tuple
    message: str


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


def _nested_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the options table at ``loc`` inside ``model`` ([] where it is not a pydantic model)."""
    current: Any = model
    for key in loc:
        field = current.model_fields.get(str(key)) if current else None
        candidates = (field.annotation, *get_args(field.annotation)) if field else ()
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(current.model_fields) if current else []


def _pydantic_problems(
    prefix: tuple, error: ValidationError, allowed: list[str], model: type[BaseModel] | None = None
) -> list[Problem]:
    problems = []
    for e in error.errors():
        loc = tuple(x for x in e["loc"])
        if e["type"] == "extra_forbidden":
            choices = allowed if len(loc) == 1 else _nested_fields(model, loc[:-1]) if model else []
            hint = did_you_mean(str(loc[-1]), choices) if choices else ""
            problems.append(Problem(prefix + loc, f"unknown key.{hint or ''} Remove it or fix its spelling."))
        elif e["type"] == "missing":
            problems.append(Problem(prefix + loc, "required key is missing."))
        else:
            given = e.get("input")
            shown = f" (got {given!r})" if not isinstance(given, (dict, list)) else ""
            problems.append(Problem(prefix + loc, f"{e['msg']}{shown}."))
    return problems


class _Validator:
    def __init__(self, data: dict[str, Any], registry: Registry, base_dir: Path):
        self.base_dir = base_dir
        self.data = data
        self.registry = registry
        self.problems: list[Problem] = []
        self.broken: set[str] = set()  # labels of sections already reported, so references to them stay quiet

    def model(self, path: tuple, cls: type[BaseModel], value: Any) -> Any:
        if not isinstance(value, dict):
            self.problems.append(Problem(path, f"must be a table, got {type(value).__name__}."))
            return None
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            self.problems.extend(_pydantic_problems(path, e, list(cls.model_fields), cls))
            return None

    def plugin(self, section: str, path: tuple, value: Any, default_type: str | None = None) -> Section | None:
        if not isinstance(value, dict):
            self.problems.append(Problem(path, f"must be a table, got {type(value).__name__}."))
            return None
        kind = KIND_OF_SECTION[section]
        type_name = value.get("type", default_type)
        if not isinstance(type_name, str):
            known = ", ".join(self.registry.names(kind))
            self.problems.append(Problem(path, f'needs `type = "<{kind} name>"`; known {kind}s: {known}.'))
            return None
        if type_name not in self.registry.entries[kind]:
            hint = did_you_mean(type_name, self.registry.names(kind))
            self.problems.append(Problem((*path, "type"), f"no {kind} plugin named {type_name!r}.{hint}"))
            return None
        cls = self.registry.get(kind, type_name)
        core_spec = CORE_KEYS[section]
        core, rest = {}, {}
        for key, item in value.items():
            (core if key in core_spec else rest)[key] = item
        for key, item in core.items():
            expected = core_spec[key]
            if key != "type" and not isinstance(item, expected):
                self.problems.append(Problem((*path, key), f"must be a {expected.__name__}, got {item!r}."))
        try:
            options = cls.Options.model_validate(rest)
        except ValidationError as e:
            allowed = [*cls.Options.model_fields, *core_spec]
            self.problems.extend(_pydantic_problems(path, e, allowed, cls.Options))
            return None
        return Section(
            label=str(path[-1]), type=type_name, cls=cls, options=options, core=core, raw=value, base_dir=self.base_dir
        )

    def plugin_table(self, section: str) -> dict[str, Section]:
        value = self.data.get(section, {})
        if not isinstance(value, dict):
            self.problems.append(Problem((section,), "must be a table of named sections."))
            return {}
        out = {}
        for label, body in value.items():
            built = self.plugin(section, (section, label), body)
            if built:
                out[label] = built
            else:
                self.broken.add(label)
        return out

    def ref(self, path: tuple, name: Any, known: Any, what: str) -> None:
        if name not in known and name not in self.broken:
            self.problems.append(Problem(path, f"unknown {what} {name!r}.{did_you_mean(str(name), known)}"))


def load_recipe(path: str | Path, registry: Registry | None = None) -> Recipe:
    """Parse and validate a recipe; raise RecipeError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {path} not found. Give the path of a .toml recipe (see recipes/).")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: TOML syntax error: {e}. Fix the syntax at that line.") from None
    return validate_data(path, text, data, registry or get_registry())


def validate_data(path: Path, text: str, data: dict[str, Any], registry: Registry) -> Recipe:
    v = _Validator(data, registry, path.resolve().parent)
    for key in data:
        if key not in TOP_LEVEL:
            v.problems.append(Problem((key,), f"unknown section.{did_you_mean(key, TOP_LEVEL)}"))
    for required in ("run", "model", "arms"):
        if required not in data:
            v.problems.append(Problem((), f"missing the [{required}] section."))
    run = v.model(("run",), RunSection, data.get("run", {})) if "run" in data else None
    model = v.model(("model",), ModelSection, data["model"]) if "model" in data else None
    sources = v.plugin_table("sources")
    scorers = v.plugin_table("scorers")
    selectors = v.plugin_table("selectors")
    evaluators = v.plugin_table("evaluators")
    trainer = v.plugin("trainer", ("trainer",), data.get("trainer", {}), default_type="llava_sft")
    soup = v.plugin("soup", ("soup",), data["soup"], default_type="soup") if "soup" in data else None
    arms: dict[str, ArmSection] = {}
    raw_arms = data.get("arms", {})
    if isinstance(raw_arms, dict):
        for label, body in raw_arms.items():
            arm = v.model(("arms", label), ArmSection, body)
            if arm:
                arms[label] = arm
            else:
                v.broken.add(label)
    if not evaluators and "evaluators" not in data:
        v.problems.append(Problem((), "missing an [evaluators.<name>] section: arms need at least one evaluator."))

    provided: dict[str, str] = {}
    for label, section in sources.items():
        try:
            names = section.build().provides()
        except UserError as exc:
            v.problems.append(Problem(("sources", label), str(exc)))
            v.broken.add(label)
            continue
        for name in names:
            if name in provided:
                v.problems.append(Problem(("sources", label), f"source name {name!r} is provided twice."))
            provided[name] = label
    for label, arm in arms.items():
        for i, name in enumerate(arm.sources):
            v.ref(("arms", label, "sources", i), name, provided, "source")
    if model and model.align:
        for i, name in enumerate(model.align.sources):
            v.ref(("model", "align", "sources", i), name, provided, "source")
    for label, section in scorers.items():
        for i, name in enumerate(section.core.get("sources", [])):
            v.ref(("scorers", label, "sources", i), name, provided, "source")
    for label, arm in arms.items():
        if arm.selector is not None:
            v.ref(("arms", label, "selector"), arm.selector, selectors, "selector")
    for label, section in selectors.items():
        for i, name in enumerate(section.core.get("scorers", [])):
            v.ref(("selectors", label, "scorers", i), name, scorers, "scorer")
    for label, scorer in scorers.items():
        if "reference_arm" in scorer.core:
            v.ref(("scorers", label, "reference_arm"), scorer.core["reference_arm"], arms, "arm")
    if soup:
        for i, name in enumerate(soup.core.get("arms", [])):
            v.ref(("soup", "arms", i), name, arms, "arm")
        if "candidates" in soup.core:
            v.ref(("soup", "candidates"), soup.core["candidates"], arms, "arm")
    if trainer:
        _check_overrides(
            v, trainer, ("model", "align", "trainer"), model.align.trainer if model and model.align else {}
        )
        for label, arm in arms.items():
            _check_overrides(v, trainer, ("arms", label, "trainer"), arm.trainer)

    if v.problems:
        raise RecipeError(path, v.problems, key_lines(text))
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


def _check_overrides(v: _Validator, trainer: Section, path: tuple, overrides: dict[str, Any]) -> None:
    if not overrides:
        return
    merged = {**trainer.options.model_dump(exclude_unset=True), **overrides}
    try:
        trainer.cls.Options.model_validate(merged)
    except ValidationError as e:
        v.problems.extend(_pydantic_problems(path, e, list(trainer.cls.Options.model_fields), trainer.cls.Options))
