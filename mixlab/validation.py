"""Recipe validation: every problem at once, each located to file:line with its key path and a hint.

The core sections are checked by their pydantic models (mixlab.sections), each plugin section by its plugin's own
options model and ``check()``; then references across sections (sources, scorers, arms, the soup), paths and bounds.
Strict types: a value keeps its TOML type (a string is not a number).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from mixlab.components import reported_name
from mixlab.errors import UserError
from mixlab.registry import Registry, did_you_mean
from mixlab.sections import AlignSection, ArmSection, ModelSection, RunSection, Section
from mixlab.store import EVENTS_FILE, folder_problem, slug

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
        return "write true or false without quotes (TOML booleans are lower case)."
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


SCORER_COLUMNS: dict[str, dict[str, int]] = {"perplexity": {"ppl": 1, "nll": 1}, "activations": {"embedding": 2}}
"""Built-in scorer type → the columns it writes and their dimensions (a scorer class may declare ``columns``)."""
SELECTOR_COLUMN_NDIM: dict[str, int] = {"fraction": 1, "coincide": 2}
"""Built-in selector type → the dimension of the score column its `column` option names (or ``column_ndim``)."""
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


def unique_problems(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def provided_sources(v: Validator, sources: dict[str, Section]) -> dict[str, str]:
    """Source name → the label of the section providing it."""
    provided: dict[str, str] = {}
    for label, section in sources.items():
        try:
            names = section.build().provides()
        except UserError as exc:
            v.add(("sources", label), str(exc))
            v.broken["sources"].add(label)
            continue
        clashes: dict[str, list[str]] = {}  # the section that already provides them → the names
        for name in names:
            if name in provided:
                clashes.setdefault(provided[name], []).append(name)
            provided[name] = label
        for other, twice in clashes.items():
            listed = ", ".join(map(repr, twice[:3])) + (f" and {len(twice) - 3} more" if len(twice) > 3 else "")
            what = f"source name {listed} is" if len(twice) == 1 else f"source names {listed} are"
            v.add(("sources", label), f"{what} provided twice (also by [sources.{other}]): rename one section.")
    return provided


def _source_categories(sources: dict[str, Section], provided: dict[str, str]) -> dict[str, str | None]:
    """Source name → its category where known without loading (a `category` key, or the plugin's categories())."""
    out: dict[str, str | None] = {}
    for label, section in sources.items():
        fixed = section.core.get("category")
        known = getattr(section.build(), "categories", None)
        per_name = known() if callable(known) else {}
        for name, owner in provided.items():
            if owner == label:
                out[name] = fixed if fixed is not None else per_name.get(name)
    return out


def cross_references(
    v: Validator,
    run: RunSection | None,
    model: ModelSection | None,
    sources: dict[str, Section],
    provided: dict[str, str],
    scorers: dict[str, Section],
    selectors: dict[str, Section],
    arms: dict[str, ArmSection],
    soup: Section | None,
) -> None:
    """References between sections, checked once each; a section already reported silences references to it."""
    # a broken source section may provide any name: unknown-source references would only repeat its problem
    quiet = bool(v.broken["sources"])

    def source_refs(path: tuple, names: list[str]) -> None:
        for i, name in enumerate(names):
            v.ref((*path, i), name, provided, "source", "sources", quiet)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            v.add(path, f"lists source {twice[0]!r} twice: name each source once.")

    def align_refs(path: tuple, align: AlignSection) -> None:
        source_refs((*path, "sources"), align.sources)
        selector = align.selector
        if selector is not None and v.ref((*path, "selector"), selector, selectors, "selector", "selectors"):
            _check_align_selector(v, path, selectors[selector], scorers)

    files: dict[str, str] = {}
    for label, arm in arms.items():
        file = slug(label).casefold()  # file names that differ in case alone clash on macOS and Windows
        if not label.strip():
            v.add(("arms", label), "has an empty name: give the arm a name, e.g. [arms.curated].")
        elif file in files:
            v.add(
                ("arms", label),
                f"is saved under the same file name ({file}) as arm {files[file]!r}, so one would overwrite the other: "
                "rename one of them.",
            )
        files.setdefault(file, label)
        if label == "soup" and soup is not None:
            v.add(("arms", label), "is the name the [soup] section's model goes by: rename the arm.")
        source_refs(("arms", label, "sources"), arm.sources)
        if arm.selector is not None:
            v.ref(("arms", label, "selector"), arm.selector, selectors, "selector", "selectors")
        if arm.align is not None:
            align_refs(("arms", label, "align"), arm.align)
    if model and model.align:
        align_refs(("model", "align"), model.align)
    for label, section in scorers.items():
        source_refs(("scorers", label, "sources"), section.core.get("sources", []))
    for label, section in selectors.items():
        for i, name in enumerate(section.core.get("scorers", [])):
            v.ref(("selectors", label, "scorers", i), name, scorers, "scorer", "scorers")
        _check_columns(v, label, section, scorers)
    if run and run.compare_to is not None:
        v.ref(("run", "compare_to"), run.compare_to, arms, "arm", "arms")
    _check_scored_pools(v, model, arms, scorers, selectors)
    _check_layers(v, model, scorers, selectors)

    # a reference arm trains before any scorer runs, so it cannot use scores itself (that would be a cycle)
    for label, scorer in scorers.items():
        ref = scorer.core.get("reference_arm")
        if ref is None or not v.ref(("scorers", label, "reference_arm"), ref, arms, "arm", "arms"):
            continue
        align = arms[ref].align
        for what, selector in (("selector", arms[ref].selector), ("align selector", align and align.selector)):
            used = selectors[selector].core.get("scorers", []) if selector in selectors else []
            if used:
                cycle = " (itself: a cycle)" if label in used else ""
                v.add(
                    ("scorers", label, "reference_arm"),
                    f"arm {ref!r} is this scorer's reference model, so it trains before any scoring; but its {what} "
                    f"{selector!r} uses scorers {used}{cycle}. Choose a reference arm without scored selection.",
                )

    for label, arm in arms.items():
        chosen = selectors.get(arm.selector or "")
        if chosen is not None and chosen.type == "individual_select":
            _check_individual_select(v, label, arm, chosen, sources, provided)

    if soup:
        names = soup.core.get("arms")
        if names is not None and not names:
            v.add(
                ("soup", "arms"),
                "is empty: name the arms to soup (at least one), or drop `arms` to soup every arm.",
            )
        for i, name in enumerate(names or []):
            v.ref(("soup", "arms", i), name, arms, "arm", "arms")
        candidates = soup.core.get("candidates")
        if candidates is not None and v.ref(("soup", "candidates"), candidates, arms, "arm", "arms"):
            selector = arms[candidates].selector
            chosen = selectors.get(selector or "")
            if selector not in v.broken["selectors"] and (chosen is None or chosen.type != "individual_select"):
                v.add(
                    ("soup", "candidates"),
                    f"arm {candidates!r} does not use an individual_select selector, so it has no candidate models: "
                    'name an arm whose selector has type = "individual_select".',
                )


def _check_scored_pools(
    v: Validator,
    model: ModelSection | None,
    arms: dict[str, ArmSection],
    scorers: dict[str, Section],
    selectors: dict[str, Section],
) -> None:
    """A scorer with its own `sources` scores every sample of each pool its selector ranks (else the select stage
    stops, after scoring)."""
    pools = [(f"arm {n!r}", a.selector, a.sources) for n, a in arms.items()]
    pools += [(f"arm {n!r}'s alignment", a.align.selector, a.align.sources) for n, a in arms.items() if a.align]
    if model and model.align:
        pools.append(("[model.align]", model.align.selector, model.align.sources))
    for where, selector, sources in pools:
        section = selectors.get(selector or "")
        for name in section.core.get("scorers", []) if section else []:
            own = scorers[name].core.get("sources") if name in scorers else None
            missing = [s for s in sources if own and s not in own]
            if missing:
                v.add(
                    ("scorers", name, "sources"),
                    f"does not score {missing} of {where}, which selector {selector!r} ranks: add them, or drop "
                    "`sources` (the scorer then scores the pools that need it).",
                )


def _check_layers(
    v: Validator, model: ModelSection | None, scorers: dict[str, Section], selectors: dict[str, Section]
) -> None:
    """An `activations` scorer's `layers` are distinct layers that exist (known for the tiny preset before it is
    built); COINCIDE's `layout_blocks` is the number of layers its scorer embeds (else its "text halves" would hold
    image blocks, silently)."""
    depth = model.tiny.layers if model and model.preset == "tiny" else None
    for label, scorer in scorers.items():
        layers = getattr(scorer.options, "layers", None) if scorer.type == "activations" else None
        if layers is None:
            continue
        top = depth if depth is not None and getattr(scorer.options, "model", None) is None else None
        bad = [x for x in layers if x < 0 or (top is not None and x >= top)]
        if not layers or bad or len(set(layers)) != len(layers):
            within = f"0..{top - 1}" if top is not None else "0..(layers - 1)"
            v.add(
                ("scorers", label, "layers"),
                f"must list distinct decoder layers within {within}, not {layers}: fix them.",
            )
    for label, section in selectors.items():
        blocks = getattr(section.options, "layout_blocks", None) if section.type == "coincide" else None
        for name in section.core.get("scorers", []) if blocks is not None else []:
            layers = embedded_layers(scorers[name], depth) if name in scorers else None
            if layers is not None and blocks != len(layers):
                v.add(
                    ("selectors", label, "layout_blocks"),
                    f"is {blocks}, but scorer {name!r} embeds {len(layers)} layers ({layers}): set layout_blocks = "
                    f"{len(layers)}, or the text halves it picks would include image blocks.",
                )


def embedded_layers(scorer: Section, depth: int | None) -> list[int] | None:
    """The layers an `activations` scorer embeds, where known before running: its `layers`, or the default ones
    of the tiny preset's `depth` when it embeds with the base model."""
    if scorer.type != "activations":
        return None
    layers = getattr(scorer.options, "layers", None)
    if layers is None and depth is not None and getattr(scorer.options, "model", None) is None:
        from mixlab.models.layers import default_layers

        return default_layers(depth)
    return layers


def _check_align_selector(v: Validator, path: tuple, section: Section, scorers: dict[str, Section]) -> None:
    """An alignment pool's selector: one that does not train models, and for [model.align] (which every arm and
    reference arm starts from) one whose scorers need no reference arm."""
    where = "[model.align]" if path == ("model", "align") else f"arm {path[1]!r}'s alignment"
    if getattr(section.cls, "trains_models", False):
        v.add(
            (*path, "selector"),
            f"selector {section.label!r} (type {section.type!r}) trains and evaluates models to decide, which "
            f"{where} cannot use (an alignment is trained once, before the arms): choose a selector that ranks or "
            'samples the pool, e.g. type = "fraction" or "random".',
        )
    if path != ("model", "align"):
        return
    for name in section.core.get("scorers", []):
        scorer = scorers.get(name)
        if scorer is not None and "reference_arm" in scorer.core:
            v.add(
                (*path, "selector"),
                f"selector {section.label!r} uses scorer {name!r}, whose reference_arm trains after [model.align]: "
                "give that scorer a `model` path instead, or drop its reference_arm (it then scores with the "
                "unaligned base model).",
            )


def _check_columns(v: Validator, label: str, section: Section, scorers: dict[str, Section]) -> None:
    """A selector that ranks by a score column: its scorers must write that column, with the right dimension."""
    ndim = SELECTOR_COLUMN_NDIM.get(section.type, getattr(section.cls, "column_ndim", None))
    column = getattr(section.options, "column", None)
    if ndim is None or not isinstance(column, str):
        return
    names = section.core.get("scorers", [])
    if "scorers" not in section.raw and not names:
        v.add(
            ("selectors", label),
            f'ranks by the score column {column!r} but names no `scorers`: add scorers = ["<scorer>"] naming a '
            f"[scorers.<name>] section that writes {column!r}.",
        )
        return
    columns: dict[str, int] = {}
    writer: dict[str, str] = {}
    for name in names:
        scorer = scorers.get(name)
        if scorer is None:
            return  # already reported as an unknown or broken scorer
        known = SCORER_COLUMNS.get(scorer.type, getattr(scorer.cls, "columns", None))
        if not isinstance(known, dict):
            return  # a plugin scorer that does not declare its columns: checked at run time
        shared = [c for c in known if c in writer]
        if shared:
            v.add(
                ("selectors", label, "scorers"),
                f"scorers {writer[shared[0]]!r} and {name!r} both write column {shared[0]!r}, so one would hide the "
                "other: name only one of them.",
            )
        writer.update({c: name for c in known if c not in writer})
        columns.update(known)
    kind = "a 2-D embedding" if ndim == 2 else "a 1-D score"
    if column not in columns:
        gives = ", ".join(f"{c!r}" for c in columns) or "no columns"
        need = ' (an embedding scorer such as type = "activations")' if ndim == 2 else ""
        v.add(
            ("selectors", label, "column"),
            f"no scorer in `scorers` writes column {column!r}; they write {gives}. Fix `column`, or name a scorer "
            f"that writes {kind}{need}.",
        )
    elif columns[column] != ndim:
        v.add(
            ("selectors", label, "column"),
            f"column {column!r} is {columns[column]}-D, but selector type {section.type!r} needs {kind}: name a "
            "scorer that writes one.",
        )


def _check_individual_select(
    v: Validator,
    arm_label: str,
    arm: ArmSection,
    section: Section,
    sources: dict[str, Section],
    provided: dict[str, str],
) -> None:
    """Individual Select's baseline must be among the arm's sources; `categories` must match its candidates and
    `category_items` name candidate categories."""
    options = section.options
    baseline = list(getattr(options, "baseline", []) or [])
    path = ("selectors", section.label)
    missing = [name for name in baseline if name not in arm.sources]
    if missing:
        hint = did_you_mean(missing[0], arm.sources) if len(missing) == 1 else ""
        v.add(
            (*path, "baseline"),
            f"baseline sources {missing} are not among the sources of arm {arm_label!r} "
            f"({', '.join(arm.sources)}).{hint} Add them to the arm's `sources` or fix `baseline`.",
        )
    twice = sorted({b for b in baseline if baseline.count(b) > 1})
    if twice:
        v.add((*path, "baseline"), f"lists {twice[0]!r} twice: name each baseline source once.")
    categories = getattr(options, "categories", None)
    if categories is not None:
        twice = sorted({c for c in categories if categories.count(c) > 1})
        if twice:
            v.add((*path, "categories"), f"lists category {twice[0]!r} twice: list each candidate category once.")
    judged = list(getattr(options, "category_items", None) or {})
    if (categories is None and not judged) or v.broken["sources"]:
        return
    known = _source_categories(sources, provided)
    candidates = [s for s in arm.sources if s not in baseline and s in provided]
    if any(known.get(s) is None for s in candidates):
        return  # some categories only show when the data is loaded: checked at run time
    plan = list(dict.fromkeys(c for s in candidates if (c := known[s]) is not None))  # none is None (above)
    for c in judged:
        if c not in plan:
            v.add(
                (*path, "category_items", c),
                f"no candidate source of arm {arm_label!r} has category {c!r}.{did_you_mean(c, plan)} Candidate "
                f"categories: {', '.join(plan) or 'none'}.",
            )
    if categories is None:
        return
    unknown = [c for c in categories if c not in plan]
    left_out = [c for c in plan if c not in categories]
    for c in unknown:
        hint = did_you_mean(c, plan)
        v.add(
            (*path, "categories", categories.index(c)),
            f"no candidate source of arm {arm_label!r} has category {c!r}.{hint} Candidate categories: "
            f"{', '.join(plan) or 'none'}.",
        )
    if left_out and not unknown:  # a misspelt category already explains the one left out
        v.add(
            (*path, "categories"),
            f"is missing {left_out}, candidate categories of arm {arm_label!r}: list each candidate category once, "
            "or drop `categories` to take them in data order.",
        )


def run_dir_problem(target: Path) -> str | None:
    """What keeps target from being a run directory (a file in its place or above it, no write permission, other
    files in it), or None.

    Relative paths are taken from the working directory. Also for `mixlab run --output-dir`.
    """
    target = target.expanduser()
    target = target if target.is_absolute() else Path.cwd() / target
    if problem := folder_problem(target, "the run directory", "choose another output directory"):
        return problem
    try:
        visible = target.is_dir() and any(not p.name.startswith(".") for p in target.iterdir())
    except OSError as exc:  # a folder that cannot be listed
        return f"cannot use {target} ({exc.strerror or exc}): choose another output directory."
    if visible and not is_run_dir(target):
        return (
            f"{target} holds other files and is not a mixlab run directory, so a run would mix its files with "
            "them: choose a new or empty folder, or an earlier run's."
        )
    return None


def is_run_dir(folder: Path) -> bool:
    """A folder a run has written to: its event log (the first thing a run writes), or a report beside stages."""
    return (folder / EVENTS_FILE).is_file() or ((folder / "report.json").is_file() and (folder / "stages").is_dir())


def check_output_dir(v: Validator, run: RunSection) -> None:
    """The run directory must be a folder that can be created and written (relative to the working directory)."""
    key = ("run", "output_dir") if run.output_dir else ("run", "name")
    target = Path(run.output_dir) if run.output_dir else Path("runs") / run.name
    problem = run_dir_problem(target)
    if problem:
        v.add(key, problem.replace("another output directory", "another `output_dir`"))


def check_toy_worlds(v: Validator, sections: dict[str, dict[str, Section]]) -> None:
    """Two sections that name one toy-world `dir` must ask for the same world: the second would regenerate it under
    the samples the first already loaded (the image files keep their names whatever the world's seed)."""
    from mixlab.toyworld.params import ToyWorldParams

    first: dict[Path, tuple[tuple, ToyWorldParams]] = {}
    for kind, table in sections.items():
        for label, section in table.items():
            for key, params in (((), section.options), (("toyworld",), getattr(section.options, "toyworld", None))):
                if not isinstance(params, ToyWorldParams) or (folder := params.own_dir(section.base_dir)) is None:
                    continue
                world = params.model_dump(include={"seed", "n_train", "n_bench", "image_size"})
                path = (kind, label, *key, "dir")
                if folder not in first:
                    first[folder] = (path, params)
                elif first[folder][1].model_dump(include=set(world)) != world:
                    other = ".".join(map(str, first[folder][0]))
                    v.add(
                        path,
                        f"{params.dir} is also {other}, with other world parameters: a folder holds one toy world. "
                        "Give the same seed, n_train, n_bench and image_size, or another dir.",
                    )


def reported_benchmarks(evaluators: dict[str, Section]) -> list[str] | None:
    """The benchmark names evaluation will report, as it names them; None where some evaluator cannot tell without
    running."""
    names: list[str] = []
    for label, section in evaluators.items():
        found = section.build().benchmark_names()
        if found is None:
            return None
        for bench in found:
            names.append(reported_name(bench, label, names))
    return names


def check_benchmark_names(
    v: Validator, run: RunSection, evaluators: dict[str, Section], selectors: dict[str, Section]
) -> None:
    """`weights`, `exclude` and Individual Select's `category_items` name benchmarks the evaluators report, where
    every evaluator knows its benchmarks without running (else the first evaluation checks them)."""
    judged: dict[str, dict[str, list[str]]] = {
        label: items
        for label, section in selectors.items()
        if section.type == "individual_select" and (items := getattr(section.options, "category_items", None))
    }
    if not (run.weights or run.exclude or judged) or not evaluators:
        return
    names = reported_benchmarks(evaluators)
    if names is None:
        return
    for label, entries in judged.items():
        for category, items in entries.items():
            for i, entry in enumerate(items):
                bench = entry.partition("/")[0]
                if bench not in names:
                    v.add(
                        ("selectors", label, "category_items", category, i),
                        f"names benchmark {bench!r}, which the evaluators do not report.{did_you_mean(bench, names)} "
                        f"They report: {', '.join(names)}.",
                    )
    if not (run.weights or run.exclude):
        return
    from mixlab.decisions import Decisions

    for key, message in Decisions(run).name_problems(names):
        v.add(("run", key) if key else ("run",), message)


def check_executor(v: Validator, run: RunSection) -> None:
    """type = "submitit": submitit is installed and takes the `parameters` (it refuses a misspelt or mistyped one only
    when the first training is submitted)."""
    import tempfile

    o = run.executor
    if o.type != "submitit":
        return
    try:
        import submitit
    except ImportError:
        v.add(("run", "executor", "type"), 'type "submitit" needs submitit: pip install -e ".[cluster]".')
        return
    with tempfile.TemporaryDirectory() as folder:
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster=o.cluster)
            slurm = executor.cluster == "slurm"  # slurm_* parameters are refused by the other clusters
            executor.update_parameters(**{k: x for k, x in o.parameters.items() if slurm or not k.startswith("slurm_")})
        except (NameError, AssertionError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
            v.add(("run", "executor", "parameters"), f"submitit refuses them: {first}. Fix or drop that parameter.")


def check_model_path(v: Validator, value: str) -> None:
    from mixlab.models.loading import model_dir_problem

    path = Path(value).expanduser()
    path = path if path.is_absolute() else v.base_dir / path
    if problem := model_dir_problem(path):
        v.add(
            ("model", "path"),
            f"{path} {problem}. Give a local llava-hf format checkpoint folder (relative to the recipe), or "
            'use preset = "tiny".',
        )


def check_overrides(v: Validator, trainer: Section, path: tuple, overrides: dict[str, Any]) -> None:
    if not overrides:
        return
    merged = {**trainer.options.model_dump(exclude_unset=True), **overrides}
    options, problems = validate_options(path, trainer.cls.Options, merged, list(trainer.cls.Options.model_fields))
    v.problems += problems
    if options is not None:
        v.check(
            Section(trainer.label, trainer.type, trainer.cls, options, {}, merged, v.base_dir), path, set(overrides)
        )
