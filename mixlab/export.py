"""`mixlab export`: an arm's training set as LLaVA JSON, ready for any trainer (LLaVA's train.py, TRL, axolotl)."""

from __future__ import annotations

from pathlib import Path

from mixlab.data import write_llava_json
from mixlab.errors import UserError
from mixlab.registry import did_you_mean
from mixlab.run_folder import run_arms
from mixlab.store import Store, load_samples


def export_arm(run_dir: Path, arm: str, out: Path, image_root: Path | None = None) -> int:
    """Write the samples arm trains on to out (LLaVA JSON); image paths absolute, or relative to image_root."""
    arms = run_arms(run_dir)
    if arm not in arms:
        hint = did_you_mean(arm, arms) if arms else ""
        listed = "" if " Known: " in hint else f" Its arms: {', '.join(arms) or 'none'}."
        raise UserError(f"{run_dir} has no arm {arm!r}.{hint}{listed} Give one of them.")
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the JSON file to write, e.g. {out / (arm + '.json')}.")
    if out.resolve().is_relative_to(run_dir.resolve()):
        raise UserError(
            f"{out} is inside the run directory {run_dir}, whose files the run needs: give a path outside it, "
            f"e.g. {arm}.json."
        )
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
