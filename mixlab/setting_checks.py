"""Recipe settings checked against the world outside their own section: the run folder, toy-world folders shared
by sections, the benchmark names the evaluators report, the executor, the model folder, trainer overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixlab.components import reported_name
from mixlab.errors import first_line
from mixlab.paths import expand_user
from mixlab.registry import did_you_mean
from mixlab.run_folder import run_dir_problem
from mixlab.sections import RunSection, Section
from mixlab.validation import Validator, validate_options


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


def reported_benchmarks(
    evaluators: dict[str, Section], with_categories: bool = False
) -> dict[str, set[str] | None] | None:
    """The benchmarks evaluation will report, as it names them, each with its item categories where asked for and
    known without running (else None); None where some evaluator cannot tell its benchmarks without running."""
    found: dict[str, set[str] | None] = {}
    for label, section in evaluators.items():
        evaluator = section.build()
        names = evaluator.benchmark_names()
        if names is None:
            return None
        categories = evaluator.item_categories() if with_categories else None
        for bench in names:
            found[reported_name(bench, label, found)] = categories.get(bench) if categories is not None else None
    return found


def check_benchmark_names(
    v: Validator, run: RunSection, evaluators: dict[str, Section], selectors: dict[str, Section]
) -> None:
    """`weights`, `exclude` and Individual Select's `category_items` name benchmarks the evaluators report, and
    `category_items` categories their items have, where every evaluator knows its benchmarks without running (else
    the first evaluation checks them)."""
    judged: dict[str, dict[str, list[str]]] = {
        label: items
        for label, section in selectors.items()
        if section.type == "individual_select" and (items := getattr(section.options, "category_items", None))
    }
    if not (run.weights or run.exclude or judged) or not evaluators:
        return
    by_category = any("/" in entry for items in judged.values() for entries in items.values() for entry in entries)
    reported = reported_benchmarks(evaluators, with_categories=by_category)
    if reported is None:
        return
    names = list(reported)
    for label, entries in judged.items():
        for category, items in entries.items():
            for i, entry in enumerate(items):
                bench, _, item_category = entry.partition("/")
                path = ("selectors", label, "category_items", category, i)
                if bench not in names:
                    v.add(
                        path,
                        f"names benchmark {bench!r}, which the evaluators do not report.{did_you_mean(bench, names)} "
                        f"They report: {', '.join(names)}.",
                    )
                elif item_category and (known := reported[bench]) is not None and item_category not in known:
                    v.add(path, _unknown_category(bench, item_category, known))
    if not (run.weights or run.exclude):
        return
    from mixlab.decisions import Decisions

    for key, message in Decisions(run).name_problems(names):
        v.add(("run", key) if key else ("run",), message)


def _unknown_category(bench: str, category: str, known: set[str]) -> str:
    if not known:
        return (
            f"names category {category!r} of {bench}, whose items name no category (its TSV has no `category` "
            f'column): name "{bench}" whole.'
        )
    return (
        f"names category {category!r} of {bench}, which has no items of that category.{did_you_mean(category, known)} "
        f"Its categories: {', '.join(sorted(known))}."
    )


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
            first = first_line(exc).rstrip(".")
            v.add(("run", "executor", "parameters"), f"submitit refuses them: {first}. Fix or drop that parameter.")


def check_model_path(v: Validator, value: str) -> None:
    from mixlab.models.loading import model_dir_problem

    path = expand_user(value)
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
