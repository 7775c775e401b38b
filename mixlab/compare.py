"""`mixlab compare`: any two arms of a finished run (or an arm and the soup), paired by seed and by benchmark item,
on the part the report shows (the test part with ``select_on = "dev"``), as the report compares each arm with
``compare_to``. Nothing is trained or evaluated again: the run's stored evaluations are read back."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from mixlab.components import Evaluation
from mixlab.decisions import Decisions
from mixlab.engine.keys import seed_tag
from mixlab.errors import UserError
from mixlab.outcomes import OUTCOMES_FILE, read_outcomes
from mixlab.registry import did_you_mean
from mixlab.run_folder import read_report, recipe_copy
from mixlab.sections import RunSection
from mixlab.stats import Comparison
from mixlab.store import Store


def arm_evaluations(run_dir: Path, report: dict, arm: str) -> dict[int, Evaluation]:
    """Seed → the arm's stored evaluation (every item), for each seed the run evaluated it with."""
    seeds = report.get("seeds") or [0]
    stages = report.get("stages", [])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(
            f"{run_dir / 'report.json'}: `seeds` is not a list of integers. Rerun `mixlab run` to rewrite it."
        )
    if not isinstance(stages, list):
        raise UserError(f"{run_dir / 'report.json'}: `stages` is not a list. Rerun `mixlab run` to rewrite it.")
    names = [*report["arms"], *(["soup"] if report.get("soup") else [])]
    if arm not in names:
        raise UserError(f"{run_dir} has no arm {arm!r}.{did_you_mean(arm, names)} Give one of its arms.")
    keys = {s.get("name"): s.get("key") for s in stages if isinstance(s, dict) and isinstance(s.get("key"), str)}
    store, out = Store(run_dir), {}
    for seed in seeds:
        key = keys.get(f"eval:{seed_tag(arm, seed, seeds)}")
        stage_dir = None if key is None else store.stage_dir("eval", key)
        if stage_dir is None or not Store.is_done(stage_dir):
            continue
        try:
            metrics = Store.result(stage_dir)["metrics"]
            if not isinstance(metrics, dict) or not metrics:
                raise ValueError("no `metrics` table")
            out[int(seed)] = Evaluation(metrics, read_outcomes(stage_dir / OUTCOMES_FILE))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a stage file cut short or edited
            raise UserError(
                f"{stage_dir}: the stored evaluation of {arm!r} cannot be read ({type(exc).__name__}: {exc}). "
                f"Rerun `mixlab run --fresh 'eval:*'` on the recipe to evaluate it again."
            ) from None
    if not out:
        raise UserError(
            f"{run_dir}: no finished evaluation of {arm!r} is stored (stage eval:{arm}…). Rerun `mixlab run` on the "
            "recipe to evaluate it."
        )
    return out


def compare_arms(
    run_dir: Path, a: str, b: str, by_category: bool = False
) -> tuple[Comparison, list[int], str, dict[str, Comparison]]:
    """A − B on the run's report part: (the comparison, the seeds both have, the part: "all" or "test", and with
    ``by_category`` A − B on each benchmark category whose items the evaluations name, else {})."""
    if a == b:
        raise UserError(f"A and B are both {a!r}: name two different arms (or an arm and the soup).")
    report = read_report(run_dir)
    run = recipe_copy(run_dir).get("run", {})
    try:
        if not isinstance(run, dict):
            raise ValueError("it is not a table")
        decisions = Decisions(RunSection.model_validate({"name": "compare", **run}))
    except ValidationError as e:
        what = "; ".join(f"run.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UserError(f"{run_dir / 'recipe.toml'}: its [run] section is not valid ({what}). Restore it.") from None
    except ValueError as e:
        raise UserError(f"{run_dir / 'recipe.toml'}: its [run] section is not valid ({e}). Restore it.") from None
    first, second = arm_evaluations(run_dir, report, a), arm_evaluations(run_dir, report, b)
    decisions.check_names(list(next(iter(first.values())).metrics))
    seeds = sorted(set(first) & set(second))
    if not seeds:
        raise UserError(f"{a!r} ({sorted(first)}) and {b!r} ({sorted(second)}) share no seed to pair on.")
    part = decisions.report_on
    views = [[decisions.view(arm[s], part) for s in seeds] for arm in (first, second)]
    categories = decisions.compare_categories(views[0], views[1]) if by_category else {}
    if by_category and not categories:
        raise UserError(
            f"{run_dir}: the evaluations name no item categories (a VLMEvalKit TSV's `category` column, an lm-eval "
            "group's subtasks; runs evaluated before mixlab recorded them have none): drop --by-category."
        )
    try:
        return decisions.compare(views[0], views[1]), seeds, part, categories
    except (KeyError, TypeError, ValueError) as exc:  # evaluations of the two arms that do not pair up
        raise UserError(
            f"{run_dir}: the stored evaluations of {a!r} and {b!r} cannot be compared ({type(exc).__name__}: {exc}). "
            "Rerun `mixlab run` on the recipe (finished stages are reused)."
        ) from None


def verdict(c: Comparison) -> str:
    """What the interval supports: "better", "worse" or "not distinguishable" (no interval: "no interval")."""
    if c.ci is None:
        return "no interval"
    return "better" if c.ci[0] > 0 else "worse" if c.ci[1] < 0 else "not distinguishable"
