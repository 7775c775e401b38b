"""`mixlab export`: an arm's training set as LLaVA JSON, ready for any trainer (LLaVA's train.py, TRL, axolotl)."""

from __future__ import annotations

from pathlib import Path

from mixlab.data import write_llava_json
from mixlab.errors import UserError
from mixlab.registry import did_you_mean
from mixlab.store import Store, load_samples


def run_arms(run_dir: Path) -> list[str]:
    """The arms of a run, from its recipe copy (so a run that stopped early still lists them)."""
    import tomllib

    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise UserError(f"{run_dir} {what}: give the run directory that `mixlab run` wrote (e.g. runs/<name>).")
    recipe = run_dir / "recipe.toml"
    if not recipe.is_file():
        raise UserError(
            f"{run_dir} is not a mixlab run directory (no recipe.toml). Give the folder `mixlab run` wrote."
        )
    try:
        data = tomllib.loads(recipe.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(f"{recipe}: not UTF-8 text. Restore the run's recipe copy (rerun `mixlab run`).") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(
            f"{recipe}: the run's recipe copy is not valid TOML ({e}). Restore it from your recipe, or rerun "
            "`mixlab run`."
        ) from None
    arms = data.get("arms", {})
    if not isinstance(arms, dict):
        raise UserError(f"{recipe}: `arms` is not a table of [arms.<name>] sections; restore the run's recipe copy.")
    return list(arms)


def export_arm(run_dir: Path, arm: str, out: Path, image_root: Path | None = None) -> int:
    """Write the samples arm trains on to out (LLaVA JSON); image paths absolute, or relative to image_root."""
    arms = run_arms(run_dir)
    if arm not in arms:
        hint = did_you_mean(arm, arms)
        raise UserError(f"{run_dir} has no arm {arm!r}.{hint} Its arms: {', '.join(arms) or 'none'}.")
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the JSON file to write, e.g. {out / (arm + '.json')}.")
    for folder in out.parents:
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"cannot write {out}: {folder} is a file, not a folder. Give another OUT path.")
            break
    if image_root is not None and not image_root.is_dir():
        what = "is a file" if image_root.exists() else "does not exist"
        raise UserError(f"--image-root {image_root} {what}: give the folder that holds the images.")
    selection = Store(run_dir).selection_file(arm)
    if not selection.is_file():
        raise UserError(
            f"arm {arm!r} has not been selected yet in {run_dir}: rerun the recipe (mixlab run) to select it first."
        )
    try:
        samples = load_samples(selection)
        if any(not isinstance(s.get("conversations"), list) or "image" not in s or "id" not in s for s in samples):
            raise ValueError("rows lack id, image or conversations")
    except Exception as exc:  # Arrow raises many kinds for a damaged file
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UserError(
            f"{selection}: the arm's saved selection cannot be read ({type(exc).__name__}: {first}). Delete it and "
            "rerun `mixlab run` to write it again."
        ) from None
    root = image_root.resolve() if image_root else None
    if root:
        outside = next((s["image"] for s in samples if s["image"] and not Path(s["image"]).is_relative_to(root)), None)
        if outside:
            raise UserError(f"image {outside} is not under --image-root {root}. Give a folder that holds every image.")
    try:
        write_llava_json(samples, out, root)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror}): give a path in a folder you can write to.") from None
    return len(samples)
