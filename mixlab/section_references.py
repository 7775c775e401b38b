"""References between a recipe's sections: the sources arms, scorers and alignments name, the scorers selectors
rank by (and the columns and layers they write), reference arms without cycles, Individual Select's baseline and
categories, the soup's arms. Each reference is checked once; a section already reported silences references to it."""

from __future__ import annotations

from mixlab.errors import UserError
from mixlab.registry import did_you_mean
from mixlab.sections import AlignSection, ArmSection, ModelSection, RunSection, Section
from mixlab.store import slug
from mixlab.validation import Validator

SCORER_COLUMNS: dict[str, dict[str, int]] = {"perplexity": {"ppl": 1, "nll": 1}, "activations": {"embedding": 2}}
"""Built-in scorer type → the columns it writes and their dimensions (a scorer class may declare ``columns``)."""
SELECTOR_COLUMN_NDIM: dict[str, int] = {"fraction": 1, "coincide": 2}
"""Built-in selector type → the dimension of the score column its `column` option names (or ``column_ndim``)."""


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
        for name in [n for n in names if "/" in n][:1]:
            v.add(
                ("sources", label),
                f"provides source {name!r}, a name with '/': samples are named source/id, so two sources could "
                "name different samples alike. Rename the section without '/'.",
            )
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
