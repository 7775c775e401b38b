"""Recipe validation: every problem at once, each located to file:line with its key path and a hint.

The core sections are checked by their pydantic models (mixlab.sections), each plugin section by its plugin's own
options model and ``check()``, into ``Problem``s that a ``Validator`` collects; references across sections are
``mixlab.section_references``, single settings checked against the world outside the recipe
``mixlab.setting_checks``. Strict types: a value keeps its TOML type (a string is not a number).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from mixlab.components import Options, loose_option_tables
from mixlab.errors import UserError
from mixlab.registry import Registry, did_you_mean
from mixlab.sections import Section

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
class Problem:
    path: tuple
    message: str


def _nested_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the options table at ``loc`` inside ``model`` ([] where it is not a pydantic model)."""
    current: Any = model
    for key in loc:
        field = current.model_fields.get(str(key)) if current else None
        candidates = (field.annotation, *get_args(field.annotation)) if field else ()
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(current.model_fields) if current else []


def _pydantic_problems(
    prefix: tuple,
    error: ValidationError,
    allowed: list[str],
    model: type[BaseModel] | None = None,
    value: Any = None,
) -> list[Problem]:
    """One problem per key: the errors of a union's members (``seeds``: a list or an int) are said together."""
    problems: list[Problem] = []
    merged: dict[tuple, list[str]] = {}
    whole: set[str] = set()  # "this list or table is not an int" from a union's other member
    for e in error.errors():
        loc = tuple(x for x in e["loc"])
        if e["type"] == "extra_forbidden":
            choices = allowed if len(loc) == 1 else _nested_fields(model, loc[:-1]) if model else []
            hint = did_you_mean(str(loc[-1]), choices) if choices else ""
            problems.append(Problem(prefix + loc, f"unknown key.{hint or ''} Remove it or fix its spelling."))
        elif e["type"] == "missing":
            problems.append(Problem(prefix + loc, "required key is missing: add it (docs/recipes.md lists every key)."))
        else:
            at = _data_loc(value, loc) if isinstance(value, dict) and loc and loc[0] in value else loc
            given = e.get("input")
            shown = f" (got {given!r})" if not isinstance(given, (dict, list)) else ""
            text = e["msg"].removeprefix("Value error, ")
            hint = _hint(e["type"])
            message = f"{text}{shown}{'' if hint == '.' and text.endswith('.') and not shown else hint}"
            if isinstance(given, (dict, list)) and e["type"].endswith("_type"):
                whole.add(message)
            if at not in merged:
                merged[at] = []
                problems.append(Problem(prefix + at, ""))
            merged[at].append(message)
    for at in list(merged):  # a union's members fail at different depths: say it once, at the shallowest key
        outer = next((o for o in merged if o != at and at[: len(o)] == o), None)
        if outer is not None:
            inner = merged.pop(at)
            # a list given where a list is allowed: its bad element is the problem, not that it is no integer
            merged[outer] = [m for m in merged[outer] if m not in whole] + inner
    problems = [p for p in problems if p.message or p.path[len(prefix) :] in merged]
    for p in problems:
        if not p.message:
            p.message = " Or: ".join(dict.fromkeys(merged[p.path[len(prefix) :]]))
    return problems


_HINTS = {
    "string_type": 'write text in quotes, e.g. "name"',
    "int_type": "write a whole number without quotes",
    "int_parsing": "write a whole number without quotes",
    "int_from_float": "write a whole number",
    "float_type": "write a number without quotes",
    "float_parsing": "write a number without quotes",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "list_type": 'write a list in brackets, e.g. ["a", "b"]',
    "tuple_type": "write a list in brackets",
    "dict_type": "write a table, e.g. { key = 1 }",
    "model_type": "write a table, e.g. { key = 1 }",
    "model_attributes_type": "write a table, e.g. { key = 1 }",
    "literal_error": "use one of those values",
    "enum": "use one of those values",
    "too_short": "add entries",
    "too_long": "remove entries",
}


def _hint(error_type: str) -> str:
    """What to do about a pydantic error: ': <hint>.' (value errors carry their own hint)."""
    if error_type in _HINTS:
        return f": {_HINTS[error_type]}."
    if error_type.startswith(("greater_than", "less_than", "multiple_of")):
        return ": change the value."
    return "." if error_type == "value_error" else ": fix the value."


SCALAR_TYPES = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "text"}


def _data_loc(value: Any, loc: tuple) -> tuple:
    """The longest prefix of a pydantic error location that exists in the raw data (drops union member tags)."""
    out: list[Any] = []
    for key in loc:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and 0 <= key < len(value):
            value = value[key]
        elif isinstance(key, str) and not isinstance(value, dict):
            continue  # a union member's tag ("list[int]"), not a key of the data
        else:
            break
        out.append(key)
    return tuple(out)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _strict_problems(
    prefix: tuple, model: type[BaseModel], value: dict[str, Any], reported: set[tuple]
) -> list[Problem]:
    """Values that validate only by changing type ("8" for an int, 8.0 for an int, true for a number): no coercion."""
    try:
        model.model_validate(value, strict=True)
        return []
    except ValidationError as e:
        errors = e.errors()
    found: dict[tuple, tuple[list[str], Any]] = {}
    for err in errors:
        given = err.get("input")
        if err["type"] not in SCALAR_TYPES or isinstance(given, (dict, list, tuple)):
            continue
        loc = _data_loc(value, tuple(err["loc"]))
        if not loc or any(prefix + loc[:k] in reported for k in range(1, len(loc) + 1)):
            continue
        wanted = found.setdefault(loc, ([], given))[0]
        if SCALAR_TYPES[err["type"]] not in wanted:
            wanted.append(SCALAR_TYPES[err["type"]])
    return [
        Problem(prefix + loc, f"must be {' or '.join(wanted)}, not {_describe(given)}: {_type_hint(wanted)}")
        for loc, (wanted, given) in found.items()
    ]


def _type_hint(wanted: list[str]) -> str:
    """What to write instead, for the kinds of value a key takes."""
    if wanted == ["true or false"]:
        return "write true or false (a TOML boolean: lower case, no quotes)."
    return "values keep their TOML type (write numbers without quotes, e.g. batch_size = 8)."


def validate_options(prefix: tuple, model: type[BaseModel], value: dict[str, Any], allowed: list[str]) -> tuple:
    """(validated model or None, problems): lists are accepted for tuples, but no scalar changes type."""
    try:
        validated, problems = model.model_validate(value, strict=False), []
    except ValidationError as e:
        validated, problems = None, _pydantic_problems(prefix, e, allowed, model, value)
    reported = {p.path for p in problems}
    problems += _strict_problems(prefix, model, value, reported)
    return (validated if not problems else None), problems


SECTION_KINDS = ("sources", "scorers", "selectors", "evaluators", "arms")


class Validator:
    def __init__(
        self,
        data: dict[str, Any],
        registry: Registry,
        recipe: Path,
        check_paths: bool = True,
        own_output_dir: bool = True,
    ):
        self.base_dir = recipe.resolve().parent  # input paths are relative to the recipe's folder
        self.check_paths = check_paths
        self.own_output_dir = own_output_dir  # False: `mixlab run --output-dir` puts the run elsewhere
        self.data = data
        self.registry = registry
        self.problems: list[Problem] = []
        # labels of sections already reported, per section kind, so references to them stay quiet
        self.broken: dict[str, set[str]] = {kind: set() for kind in (*SECTION_KINDS, "trainer", "soup")}

    def add(self, path: tuple, message: str) -> None:
        self.problems.append(Problem(path, message))

    def model(self, path: tuple, cls: type[BaseModel], value: Any) -> Any:
        if not isinstance(value, dict):
            self.add(path, f"must be a table, got {_describe(value)}.")
            return None
        validated, problems = validate_options(path, cls, value, list(cls.model_fields))
        self.problems += problems
        return validated

    def plugin(self, section: str, path: tuple, value: Any, default_type: str | None = None) -> Section | None:
        if not isinstance(value, dict):
            self.add(path, f"must be a table (a [{'.'.join(map(str, path))}] section), got {_describe(value)}.")
            return None
        kind = KIND_OF_SECTION[section]
        type_name = value.get("type", default_type)
        if not isinstance(type_name, str):
            known = ", ".join(self.registry.names(kind))
            self.add(path, f'needs `type = "<{kind} name>"`; known {kind}s: {known}.')
            return None
        if type_name not in self.registry.entries[kind]:
            hint = did_you_mean(type_name, self.registry.names(kind))
            self.add((*path, "type"), f"no {kind} plugin named {type_name!r}.{hint}")
            return None
        cls = self.registry.get(kind, type_name)
        core_spec = CORE_KEYS[section]
        if contract := _options_contract_problem(cls, section, core_spec):
            package = self.registry.entries[kind][type_name].package
            self.add((*path, "type"), f"{kind} {type_name!r} (plugin package {package!r}) {contract}")
            return None
        core: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for key, item in value.items():
            (core if key in core_spec else rest)[key] = item
        ok = True
        for key, item in list(core.items()):
            expected = core_spec[key]
            if key == "type":
                continue
            if not isinstance(item, expected):
                what = "a list of names" if expected is list else "a name (a string)"
                example = f'{key} = ["a", "b"]' if expected is list else f'{key} = "a"'
                self.add((*path, key), f"must be {what}, not {_describe(item)}: write e.g. {example}.")
                del core[key]
                ok = False
            elif expected is list:
                bad = [i for i, x in enumerate(item) if not isinstance(x, str)]
                if bad:
                    self.add((*path, key, bad[0]), f"must be a name (a string), not {_describe(item[bad[0]])}.")
                    del core[key]
                    ok = False
                elif len(set(item)) != len(item):
                    twice = next(x for x in item if item.count(x) > 1)
                    self.add((*path, key), f"lists {twice!r} twice: name each once.")
                    core[key] = list(dict.fromkeys(item))
        allowed = [*cls.Options.model_fields, *core_spec]
        options, problems = validate_options(path, cls.Options, rest, allowed)
        self.problems += problems
        if options is None or not ok:
            return None
        built = Section(
            label=str(path[-1]), type=type_name, cls=cls, options=options, core=core, raw=value, base_dir=self.base_dir
        )
        return built if self.check(built, path) else None

    def check(self, section: Section, path: tuple, only: set[str] | None = None) -> bool:
        """Run the plugin's own ``check()``; False if it found problems (then the section counts as broken). Without
        path checks, problems with its ``path_options`` are left out."""
        try:
            found = section.build().check()
        except (UserError, OSError, ValueError) as exc:
            found = [((), str(exc))] if self.check_paths else []
        if not self.check_paths:
            found = [(key, message) for key, message in found if not (key and key[0] in section.cls.path_options)]
        if only is not None:
            found = [(key, message) for key, message in found if key and key[0] in only]
        for key, message in found:
            self.add((*path, *key), message)
        return not found

    def table(self, section: str) -> dict[str, Any]:
        """The raw ``[section.<name>]`` tables, with a problem if the section is not a table of tables."""
        value = self.data.get(section, {})
        noun = "arm" if section == "arms" else "section"
        if not isinstance(value, dict) and section in self.broken:
            self.broken[section].add("*")  # reported here: references to its sections stay quiet
        if isinstance(value, list):
            self.add(
                (section,),
                f"must be named tables like [{section}.<name>], not an array of tables ([[{section}]]) or a list: "
                f"give each {noun} a name.",
            )
            return {}
        if not isinstance(value, dict):
            self.add(
                (section,),
                f"must be named tables like [{section}.<name>], not {_describe(value)}: write each {noun} as its own "
                f"table, [{section}.<name>], with its keys below it.",
            )
            return {}
        return value

    def plugin_table(self, section: str) -> dict[str, Section]:
        out = {}
        for label, body in self.table(section).items():
            built = self.plugin(section, (section, label), body)
            if built:
                out[label] = built
            else:
                self.broken[section].add(label)
        return out

    def ref(self, path: tuple, name: Any, known: Any, what: str, kind: str, quiet: bool = False) -> bool:
        """Whether name is known; reports it unless it names a section already reported (or quiet)."""
        if name in known:
            return True
        if name not in self.broken[kind] and "*" not in self.broken[kind] and not quiet:
            hint = did_you_mean(str(name), known) or f" The recipe has no [{kind}] sections: add [{kind}.{name}]."
            self.add(path, f"unknown {what} {name!r}.{hint}")
        return False


def _options_contract_problem(cls: type, section: str, core_keys: dict[str, Any]) -> str | None:
    """What keeps a plugin's options model from being checked like the built-ins' (a phrase after its name), or None:
    it derives from mixlab.components.Options and leaves the keys mixlab reads in its section to mixlab."""
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, Options)):
        return (
            "has an options model that is not a subclass of mixlab.components.Options, so its options cannot be "
            "checked as the others are: ask its authors to derive it from mixlab.components.Options, or use another "
            "plugin."
        )
    if loose := loose_option_tables(options):
        return (
            f"has an option table, `{loose[0]}`, whose model is not a subclass of mixlab.components.Options, so a "
            "misspelt key inside it would be dropped silently: ask its authors to derive that model from "
            "mixlab.components.Options, or use another plugin."
        )
    if clash := sorted(set(options.model_fields) & set(core_keys)):
        return (
            f"has options named {clash}, which mixlab reads itself in a [{section}] section, so they would never "
            "reach the plugin: ask its authors to rename them."
        )
    return None


def unique_problems(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out
