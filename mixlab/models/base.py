"""The model stage: the recipe's base model, built from config (tiny preset) or found at a local path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mixlab.errors import UserError

if TYPE_CHECKING:
    from mixlab.data import Sample
    from mixlab.recipe import ModelSection


def corpus_of(samples: list[Sample]) -> list[str]:
    """Every conversation text of the pool: what the tiny tokenizer is trained on."""
    return [turn["value"].replace("<image>", "") for s in samples for turn in s["conversations"]]


def prepare_base_model(model: ModelSection, samples: list[Sample], stage_dir: Path, seed: int, base_dir: Path) -> Path:
    """Build the tiny preset into stage_dir/model, or check and return a local checkpoint path."""
    if model.preset == "tiny":
        from mixlab.models.tiny import build_tiny_llava

        return build_tiny_llava(stage_dir / "model", corpus_of(samples), seed=seed, **model.tiny.model_dump())
    path = Path(model.path or "").expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not (path / "config.json").is_file():
        raise UserError(
            f"[model] path {path} is not a model directory (no config.json). Give a local "
            "llava-hf format checkpoint, e.g. a download of llava-hf/llava-1.5-7b-hf."
        )
    return path.resolve()
