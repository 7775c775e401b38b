"""The model stage: the recipe's base model, built from config (tiny preset) or found at a local path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixlab.errors import UserError
from mixlab.paths import expand_user

if TYPE_CHECKING:
    from mixlab.data import Sample
    from mixlab.sections import ModelSection


def corpus_of(samples: list[Sample]) -> list[str]:
    """Every conversation text of the pool: what the tiny tokenizer is trained on."""
    return [turn["value"].replace("<image>", "") for s in samples for turn in s["conversations"]]


def prepare_base_model(
    model: ModelSection,
    samples: list[Sample],
    stage_dir: Path,
    seed: int,
    base_dir: Path,
    record: Callable[..., Any] = lambda **_: None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build the tiny preset into stage_dir/model (its vision tower pretrained), or check a local checkpoint path."""
    if model.preset == "tiny":
        from mixlab.models.tiny import build_tiny_llava

        tiny = model.tiny
        shape = tiny.model_dump(exclude={"vision_pretrain_steps", "language_pretrain_steps"})
        out = build_tiny_llava(stage_dir / "model", corpus_of(samples), seed=seed, **shape)
        if tiny.vision_pretrain_steps or tiny.language_pretrain_steps:
            from mixlab.models.language_pretrain import LanguagePretraining, pretrain_language
            from mixlab.models.loading import load_model
            from mixlab.models.vision_pretrain import VisionPretraining, pretrain_vision

            net, processor = load_model(out)
            total = tiny.vision_pretrain_steps + tiny.language_pretrain_steps
            if tiny.vision_pretrain_steps:
                vision = VisionPretraining(steps=tiny.vision_pretrain_steps)
                done = (lambda step, _: progress(step, total)) if progress else None
                record(vision_pretrain_accuracy=pretrain_vision(net, processor, seed, vision, done))
            if tiny.language_pretrain_steps:
                language = LanguagePretraining(steps=tiny.language_pretrain_steps)
                offset = tiny.vision_pretrain_steps
                done = (lambda step, _: progress(offset + step, total)) if progress else None
                record(language_pretrain_accuracy=pretrain_language(net, processor, seed, language, done))
            net.save_pretrained(out)
        return out
    path = expand_user(model.path or "")
    if not path.is_absolute():
        path = base_dir / path
    if not (path / "config.json").is_file():
        raise UserError(
            f"[model] path {path} is not a model directory (no config.json). Give a local "
            "llava-hf format checkpoint, e.g. a download of llava-hf/llava-1.5-7b-hf."
        )
    return path.resolve()
