"""A run's folder: whether a path can hold a run, and a finished one read back (the arms of its recipe copy, its
report.json), with one clear message for each way the folder can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

from mixlab.errors import UserError
from mixlab.paths import expand_user
from mixlab.store import EVENTS_FILE, folder_problem


def check_run_dir(run_dir: Path) -> None:
    """A UserError unless run_dir is a folder."""
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise UserError(f"{run_dir} {what}: give the run directory that `mixlab run` wrote (e.g. runs/<name>).")


def recipe_copy(run_dir: Path) -> dict:
    """The recipe copy a run keeps (RUN_DIR/recipe.toml), parsed."""
    import tomllib

    check_run_dir(run_dir)
    recipe = run_dir / "recipe.toml"
    if not recipe.is_file():
        raise UserError(
            f"{run_dir} is not a mixlab run directory (no recipe.toml). Give the folder `mixlab run` wrote."
        )
    try:
        return tomllib.loads(recipe.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(f"{recipe}: not UTF-8 text. Restore the run's recipe copy (rerun `mixlab run`).") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(
            f"{recipe}: the run's recipe copy is not valid TOML ({e}). Restore it from your recipe, or rerun "
            "`mixlab run`."
        ) from None


def run_arms(run_dir: Path) -> list[str]:
    """The arms of a run, from its recipe copy (so a run that stopped early still lists them)."""
    recipe, data = run_dir / "recipe.toml", recipe_copy(run_dir)
    arms = data.get("arms", {})
    if not isinstance(arms, dict):
        raise UserError(f"{recipe}: `arms` is not a table of [arms.<name>] sections; restore the run's recipe copy.")
    return list(arms)


def read_report(run_dir: Path) -> dict:
    """RUN_DIR/report.json as a dict, or a UserError saying what is wrong with the folder or the file."""
    check_run_dir(run_dir)
    path = run_dir / "report.json"
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a report: remove it and rerun `mixlab run` to write the report.")
    if not path.is_file():
        if (run_dir / "stages").is_dir():
            raise UserError(
                f"{run_dir} holds a run that has not finished (no report.json: stopped before its end or while "
                f"writing its files). Finish it with `mixlab run {last_recipe(run_dir)} --output-dir {run_dir}` "
                "(its finished stages are reused)."
            )
        raise UserError(
            f"{path} does not exist: give a run directory that `mixlab run` has written a report to (rerun the "
            "recipe to write it)."
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read as UTF-8 text ({e}). Rerun `mixlab run` to rewrite it.") from None
    if not text.strip():
        raise UserError(f"{path} is empty (a run stopped while writing it?). Rerun `mixlab run` to rewrite it.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}); the file is cut short or edited. Rerun `mixlab run` to "
            "rewrite it."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("arms"), dict):
        raise UserError(
            f"{path}: not a mixlab report (no `arms` table). Give a run directory's report.json, or rerun "
            "`mixlab run` to rewrite it."
        )
    return data


def last_recipe(run_dir: Path) -> str:
    """The recipe the last `mixlab run` in run_dir ran (events.jsonl), where it still exists; else "RECIPE". Not the
    copy inside run_dir: its relative paths would resolve from there."""
    try:
        lines = (run_dir / EVENTS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return "RECIPE"
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "run" and isinstance(event.get("recipe"), str):
            return event["recipe"] if Path(event["recipe"]).is_file() else "RECIPE"
    return "RECIPE"


def is_finished_report(path: Path) -> bool:
    """Whether path holds the report of a run that finished: no ``error`` and no failed stage."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(report, dict):
        return False
    return "error" not in report and all(s.get("status") != "failed" for s in report.get("stages", []))


def run_dir_problem(target: Path) -> str | None:
    """What keeps target from being a run directory (a file in its place or above it, no write permission, other
    files in it), or None.

    Relative paths are taken from the working directory. Also for `mixlab run --output-dir`.
    """
    target = expand_user(target)
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
