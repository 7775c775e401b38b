"""``llava_sft``: LLaVA fine-tuning on TRL's SFTTrainer (assistant-only loss, per-part lrs, LoRA, DeepSpeed)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from mixlab import hookimpl
from mixlab.caches import files_fingerprint
from mixlab.components import RunContext, Trainer, TrainResult
from mixlab.data import Sample
from mixlab.hookspecs import Register
from mixlab.training.sft import SFTSettings


class LlavaSft(Trainer):
    """Full or LoRA fine-tuning of a llava-hf model; writes a standard HF directory (``work_dir/model``)."""

    name = "llava_sft"
    Options = SFTSettings
    options: SFTSettings
    path_options = frozenset({"deepspeed", "vision_cache_dir", "attn_implementation"})

    def settings(self, overrides: dict[str, Any] | None) -> SFTSettings:
        settings = self.with_options(overrides).options.model_copy()  # paths resolved below, on a copy
        if settings.deepspeed:  # like every path in a recipe, relative to the recipe's folder
            settings.deepspeed = str(self.resolve(settings.deepspeed))
        if settings.vision_cache_dir:
            settings.vision_cache_dir = str(self.resolve(settings.vision_cache_dir))
        return settings

    def fingerprint(self) -> str:
        """The DeepSpeed config's content: an edited optimizer or ZeRO stage trains again."""
        return files_fingerprint([self.resolve(self.options.deepspeed)]) if self.options.deepspeed else ""

    def train(
        self,
        samples: list[Sample],
        base_model: Path,
        work_dir: Path,
        ctx: RunContext,
        overrides: dict[str, Any] | None = None,
    ) -> TrainResult:
        """Train with seed ``options.seed + ctx.seed``: each training replicate of a run gets its own seed."""
        from mixlab.training.sft import train_llava

        settings = self.settings(overrides)
        settings.seed = (settings.seed + ctx.seed) % 2**32
        if settings.vision_cache and settings.vision_cache_dir is None:  # shared by the run's trainings and seeds
            settings.vision_cache_dir = str(ctx.cache_dir("vision_features", {"trainer": self.name}))
        with ExitStack() as stack:
            bar: list[Any] = []

            def progress(step: int, total: int) -> None:
                if not bar:
                    bar.append(stack.enter_context(ctx.progress(f"train {work_dir.name[:40]}", total)))
                bar[0](completed=step)

            stats = train_llava(samples, base_model, work_dir, settings, progress)
        return TrainResult(work_dir / "model", stats)

    def check(self) -> list[tuple[tuple, str]]:
        """The DeepSpeed config is a readable JSON file and DeepSpeed is installed; flash-attn is installed where it
        is asked for by name; the vision cache folder can be written; sizes are within bounds."""
        import importlib.util
        import json

        o = self.options
        problems: list[tuple[tuple, str]] = []
        for key, top in (("batch_size", 4096), ("grad_accum", 4096), ("max_length", 1 << 20), ("epochs", 1000)):
            value = getattr(o, key)
            if value is not None and value > top:
                problems.append(((key,), f"{key} = {value} is larger than {top}: check the value."))
        if o.lora is not None and not o.lora.target_modules:
            problems.append((("lora", "target_modules"), "is empty: name the linear layers to adapt, or drop it."))
        if o.attn_implementation == "flash_attention_2" and not any(
            importlib.util.find_spec(name)
            for name in ("flash_attn", "kernels")  # kernels: transformers' Hub build
        ):
            problems.append(
                (
                    ("attn_implementation",),
                    'is "flash_attention_2", but flash-attn is not installed here: pip install -e ".[gpu]" on a GPU '
                    'machine, or use "auto" (flash-attn where installed, else sdpa).',
                )
            )
        if o.vision_cache_dir:
            from mixlab.store import folder_problem

            if problem := folder_problem(self.resolve(o.vision_cache_dir), "the vision cache folder"):
                problems.append((("vision_cache_dir",), problem))
        if o.deepspeed:
            path = self.resolve(o.deepspeed)
            found: str | None
            if not path.exists():
                found = "does not exist"
            elif path.is_dir():
                found = "is a folder, not a DeepSpeed JSON config file"
            else:
                try:
                    config = json.loads(path.read_text(encoding="utf-8"))
                    found = None if isinstance(config, dict) else "is not a JSON object ({...})"
                except UnicodeDecodeError:
                    found = "is not UTF-8 text"
                except json.JSONDecodeError as e:
                    found = f"is not valid JSON (line {e.lineno}: {e.msg})"
                except OSError as e:
                    found = f"cannot be read ({e.strerror})"
            if found:
                problems.append(
                    (("deepspeed",), f"DeepSpeed config {path} {found}: give a JSON file (relative to the recipe).")
                )
            elif importlib.util.find_spec("deepspeed") is None:
                problems.append(
                    (("deepspeed",), 'DeepSpeed is not installed: pip install -e ".[deepspeed]", or drop it.')
                )
        return problems


@hookimpl
def register_trainers(register: Register) -> None:
    register(LlavaSft)
