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

    recipe = run_dir / "recipe.toml"
    if not recipe.is_file():
        raise UserError(
            f"{run_dir} is not a mixlab run directory (no recipe.toml). Give the folder `mixlab run` wrote."
        )
    return list(tomllib.loads(recipe.read_text()).get("arms", {}))


def export_arm(run_dir: Path, arm: str, out: Path, image_root: Path | None = None) -> int:
    """Write the samples arm trains on to out (LLaVA JSON); image paths absolute, or relative to image_root."""
    arms = run_arms(run_dir)
    if arm not in arms:
        hint = did_you_mean(arm, arms)
        raise UserError(f"{run_dir} has no arm {arm!r}.{hint} Its arms: {', '.join(arms) or 'none'}.")
    selection = Store(run_dir).selection_file(arm)
    if not selection.is_file():
        raise UserError(f"arm {arm!r} has not been selected yet in {run_dir}: run the recipe (mixlab run) first.")
    samples = load_samples(selection)
    root = image_root.resolve() if image_root else None
    if root:
        outside = next((s["image"] for s in samples if s["image"] and not Path(s["image"]).is_relative_to(root)), None)
        if outside:
            raise UserError(f"image {outside} is not under --image-root {root}. Give a folder that holds every image.")
    write_llava_json(samples, out, root)
    return len(samples)
