"""``llava_sft``: LLaVA fine-tuning on TRL's SFTTrainer (assistant-only loss, per-part lrs, LoRA, DeepSpeed)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from mixlab import hookimpl
from mixlab.components import Trainer, TrainResult
from mixlab.training.sft import SFTSettings


class LlavaSft(Trainer):
    """Full or LoRA fine-tuning of a llava-hf model; writes a standard HF directory (``work_dir/model``)."""

    name = "llava_sft"
    Options = SFTSettings

    def settings(self, overrides: dict[str, Any] | None) -> SFTSettings:
        settings = SFTSettings.model_validate({**self.options.model_dump(exclude_unset=True), **(overrides or {})})
        if settings.deepspeed:  # like every path in a recipe, relative to the recipe's folder
            settings.deepspeed = str(self.resolve(settings.deepspeed))
        return settings

    def train(self, samples, base_model: Path, work_dir: Path, ctx, overrides=None) -> TrainResult:
        from mixlab.training.sft import train_llava

        settings = self.settings(overrides)
        with ExitStack() as stack:
            bar: list[Any] = []

            def progress(step: int, total: int) -> None:
                if not bar:
                    bar.append(stack.enter_context(ctx.progress(f"train {work_dir.name[:40]}", total)))
                bar[0](completed=step)

            stats = train_llava(samples, base_model, work_dir, settings, progress)
        return TrainResult(work_dir / "model", stats)


@hookimpl
def register_trainers(register):
    register(LlavaSft)
