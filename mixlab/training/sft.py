"""Supervised fine-tuning of a LLaVA-style model on mixlab samples, with TRL's SFTTrainer.

Assistant-only loss, separate learning rates for the vision tower / projector / language model, optional LoRA
(merged into a plain HF dir at the end), optional DeepSpeed, checkpoints for crash-resume.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, model_validator

from mixlab.components import Options, Seed
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.models.parts import LM, PROJECTOR, VISION, param_part

LM_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
"""transformers' learning-rate schedules that need no settings of their own."""
Attention = Literal["auto", "sdpa", "eager", "flash_attention_2"]
ONE_ROW: Final = 1 << 40
"""pack_length that puts a whole batch in one row."""


class LoraSettings(Options):
    """LoRA on the language model's linear layers; the projector stays fully trained."""

    r: int = Field(128, ge=1, description="LoRA rank.")
    alpha: int = Field(256, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LM_PROJECTIONS),
        description="Names of the linear layers to adapt; matched only inside the language model.",
    )


class SFTSettings(Options):
    """Settings of one SFT run."""

    epochs: float = Field(1.0, gt=0, description="Number of passes over the data (may be fractional).")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate of the language model.")
    projector_lr: float | None = Field(None, gt=0, description="Peak lr of the projector; None means learning_rate.")
    vision_lr: float | None = Field(None, gt=0, description="Peak lr of the vision tower; None freezes it.")
    freeze_language_model: bool = Field(
        False,
        description="Train only the projector (and the vision tower when vision_lr is set), as LLaVA's first stage "
        "(alignment on captions) does; learning_rate is then unused.",
    )
    batch_size: int = Field(8, ge=1, description="Samples per device per step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of the steps with linear lr warm-up.")
    scheduler: Scheduler = Field("cosine", description="LR schedule after warm-up (a transformers scheduler name).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay (not on biases and norms).")
    max_length: int | None = Field(None, ge=1, description="Truncate sequences to this many tokens; None = never.")
    lora: LoraSettings | None = Field(None, description="LoRA settings; None trains the full weights.")
    deepspeed: str | None = Field(None, description="Path of a DeepSpeed JSON config; None = no DeepSpeed.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    attn_implementation: Attention = Field("auto", description='"auto", "sdpa", "eager" or "flash_attention_2".')
    seed: Seed = Field(0, description="Seed of initialisation (LoRA), shuffling and dropout.")
    save_steps: int | None = Field(
        None, ge=1, description="Checkpoint every N steps; None = by the clock (save_minutes)."
    )
    save_minutes: float = Field(
        30.0,
        gt=0,
        description="Without save_steps: a checkpoint (for crash-resume) once this many minutes have passed since the "
        "start or the last one; a shorter training writes none.",
    )
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")
    packing: bool = Field(
        False,
        description="Padding-free batches: each batch's samples packed into rows with per-sample position ids "
        "(attention stays within a sample); the same losses as padded batches, without the padding's compute.",
    )
    pack_length: int | None = Field(
        None,
        ge=1,
        description="Tokens per packed row (sdpa, eager); None = the whole batch in one row (sdpa, flash-attn), or "
        "rows as wide as the batch's longest sample (eager).",
    )
    vision_cache: bool = Field(
        False,
        description="Compute the frozen vision tower's features once per image and reuse them in later epochs "
        "(needs vision_lr = None).",
    )
    vision_cache_dir: str | None = Field(
        None,
        description="Keep the cached vision features in this folder, shared by every run, arm and seed that sets it "
        "(keyed by tower weights and image content); None = in memory, for one training.",
    )

    @model_validator(mode="after")
    def _cache_needs_frozen_tower(self) -> SFTSettings:
        if self.vision_cache and self.vision_lr is not None:
            raise ValueError(
                "vision_cache = true needs a frozen vision tower, but vision_lr is set: drop vision_lr (frozen tower) "
                "or set vision_cache = false."
            )
        if self.vision_cache_dir is not None and not self.vision_cache:
            raise ValueError("vision_cache_dir is set but vision_cache is false: set vision_cache = true.")
        if self.pack_length is not None and not self.packing:
            raise ValueError("pack_length is set but packing is false: set packing = true, or drop pack_length.")
        if self.freeze_language_model and self.lora is not None:
            raise ValueError(
                "freeze_language_model = true leaves no language model weights for LoRA to adapt: drop one of them."
            )
        return self


def _sft_trainer_class() -> type:
    """SFTTrainer with one AdamW param group per (model part, weight decay), each with its own lr."""
    from trl import SFTTrainer

    class PartLRSFTTrainer(SFTTrainer):
        part_lrs: dict[str, float] = {}

        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is not None:
                return self.optimizer
            # Any: transformers types self.model as Module | None, get_optimizer_cls_and_kwargs wants a PreTrainedModel
            opt_model: Any = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[str, bool], list[Any]] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    groups.setdefault((param_part(name), name in decay), []).append(param)
            param_groups = [
                {
                    "params": params,
                    "lr": self.part_lrs[part],
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    "part": part,
                }
                for (part, decays), params in sorted(groups.items())
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
            return self.optimizer

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            # transformers 5.x saves LLaVA weights under their legacy names (save_original_format=True) but the
            # Trainer resumes with a raw load_state_dict(strict=False): no key matches and the weights silently stay
            # at the base model (transformers#43701). Load through from_pretrained, which renames the keys.
            from peft import PeftModel

            model = self.model if model is None else model
            ckpt = Path(resume_from_checkpoint)
            has_weights = (ckpt / "model.safetensors").is_file() or (ckpt / "model.safetensors.index.json").is_file()
            if isinstance(model, PeftModel) or self.is_deepspeed_enabled or not has_weights:
                super()._load_from_checkpoint(resume_from_checkpoint, model)
                return
            loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype, device_map="cpu")
            model.load_state_dict(loaded.state_dict(), strict=True)
            del loaded

    return PartLRSFTTrainer


def _progress_callback(progress: Callable[[int, int], None]) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress(state.global_step, state.max_steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress(state.global_step, state.max_steps)

    return ProgressCallback()


def _check_lora_targets(model: Any, lora: LoraSettings) -> None:
    """Every name in lora.target_modules is a linear layer of the language model (else LoRA would fail or miss it)."""
    import torch

    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "language_model" in name  # where _lora_config's pattern looks
    }
    unknown = sorted(set(lora.target_modules) - linear)
    if unknown:
        raise UserError(
            f"trainer.lora.target_modules: the language model has no linear layer named {', '.join(map(repr, unknown))}"
            f"; its linear layers: {', '.join(sorted(linear))}. Name some of those."
        )


def _lora_config(lora: LoraSettings, train_vision: bool) -> Any:
    from peft import LoraConfig

    names = "|".join(sorted(set(lora.target_modules)))
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=rf".*language_model.*\.({names})",
        modules_to_save=["multi_modal_projector", *(["vision_tower"] if train_vision else [])],
    )


def _setup_deepspeed(path: str) -> str:
    """Check the JSON exists; on a single process without a launcher, set the env that DeepSpeed needs."""
    if not Path(path).is_file():
        raise UserError(f"DeepSpeed config {path} does not exist")
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("deepspeed is set but DeepSpeed is not installed: pip install 'mixlab[deepspeed]'")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    return str(Path(path).resolve())


def build_dataset(samples: list[Sample]) -> Any:
    """A datasets.Dataset of TRL vision rows; images stay paths and are opened by the collator."""
    import datasets

    from mixlab.data import sample_to_row

    return datasets.Dataset.from_list([sample_to_row(s) for s in samples])


# ---- the pre-training check: every image is there, no sequence is longer than the model can take -----------------
TURN_OVERHEAD = 8
"""Tokens the chat template adds per turn (role markers, end of turn), in the length estimate."""


def sequence_lengths(samples: list[Sample], processor: Any, image_tokens: int) -> list[int]:
    """Estimated tokens per sample: the turns' text, the image's tokens and the template's per-turn overhead."""
    from mixlab.data import sample_text

    texts = [sample_text(s) for s in samples]
    ids = processor.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [
        len(tokens) + (image_tokens if s.get("image") else 0) + TURN_OVERHEAD * len(s["conversations"])
        for s, tokens in zip(samples, ids, strict=True)
    ]


def check_before_training(samples: list[Sample], processor: Any, max_length: int | None, context: int | None) -> None:
    """UserError naming the sample (source/record id) whose image is gone or whose sequence is too long to train on.

    Without ``max_length`` a sequence longer than the model's context (``max_position_embeddings``) would be
    trained whole (a 50,000-token sample asks for tens of GB); with it, sequences are truncated to max_length.
    A token covers at least half a byte's worth of bound (2 × UTF-8 bytes, SentencePiece word markers included),
    so only the samples whose bound passes the context are tokenized.
    """
    from pathlib import Path

    from mixlab.data import sample_text

    for s in samples:
        if (image := s.get("image")) and not Path(image).is_file():
            raise UserError(
                f"sample {s['id']!r}: image file {s['image']} does not exist (the source was loaded without "
                'checking images?). Restore the file, or load the source with check_images = "open" and '
                'on_error = "skip" to leave such records out.'
            )
    image_tokens = _image_tokens(processor, samples)
    if max_length is not None:
        if context and max_length > context:
            raise UserError(
                f"[trainer] max_length = {max_length} is more than the model's context of {context} tokens: set "
                f"max_length to at most {context}."
            )
        if image_tokens and max_length <= image_tokens:
            raise UserError(
                f"[trainer] max_length = {max_length} is not more than the {image_tokens} tokens each image takes, so "
                "truncation would cut every image apart: set max_length above that plus the text, or drop it."
            )
        return
    if not context:
        return
    texts = [sample_text(s) for s in samples]
    bound = [2 * len(t.encode()) + TURN_OVERHEAD * len(s["conversations"]) for s, t in zip(samples, texts, strict=True)]
    suspects = [i for i, b in enumerate(bound) if b + image_tokens > context]
    if not suspects:
        return
    lengths = sequence_lengths([samples[i] for i in suspects], processor, image_tokens)
    too_long = [(samples[i], n) for i, n in zip(suspects, lengths, strict=True) if n > context]
    if too_long:
        sample, n = max(too_long, key=lambda sn: sn[1])
        more = f" ({len(too_long)} samples are; this is the longest)" if len(too_long) > 1 else ""
        raise UserError(
            f"sample {sample['id']!r} is about {n} tokens long{more}, more than the model's context of {context} "
            f"tokens. Set max_length = {context} (or less) in [trainer] to truncate long samples, or drop them from "
            "the data (`mixlab data inspect RECIPE` shows the lengths)."
        )


def _image_tokens(processor: Any, samples: list[Sample]) -> int:
    """The tokens an image takes in the sequence (of the first sample with one; 0 if none has)."""
    first = next((s for s in samples if s.get("image")), None)
    if first is None:
        return 0
    from mixlab.models.sample_scores import image_token_count

    try:
        return image_token_count(processor, [first])
    except Exception as exc:  # PIL raises many kinds for a file that is there but does not decode
        raise UserError(
            f"sample {first['id']!r}: image file {first['image']} is not a readable image ({type(exc).__name__}: "
            f'{exc}). Load the source with check_images = "open" (the default) to find and skip such records.'
        ) from None


def make_trainer(
    samples: list[Sample],
    base_model: Path,
    out_dir: Path,
    settings: SFTSettings,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Any, Any, Any]:
    """(trainer, collator, processor) ready to train `base_model` on `samples`; checkpoints in out_dir/"checkpoints"."""
    if not samples:
        raise UserError("no samples to train on: the selection is empty")
    from trl import SFTConfig

    from mixlab.models.encoding import TrainingCollator
    from mixlab.models.loading import device_kind, load_model
    from mixlab.models.templates import training_template
    from mixlab.training.checkpoints import checkpoint_timer

    deepspeed = _setup_deepspeed(settings.deepspeed) if settings.deepspeed else None
    on_cuda = device_kind() == "cuda"
    model, processor = load_model(
        base_model,
        for_training=True,
        attn_implementation=settings.attn_implementation,
        device="cuda" if on_cuda else "cpu",
    )
    processor.chat_template = training_template(processor)
    check_before_training(
        samples, processor, settings.max_length, getattr(model.config.get_text_config(), "max_position_embeddings", 0)
    )
    tokenizer = processor.tokenizer
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    train_vision = settings.vision_lr is not None
    if settings.lora is not None:
        _check_lora_targets(model, settings.lora)
    frozen = ({LM} if settings.freeze_language_model else set()) | (set() if train_vision else {VISION})
    for name, param in model.named_parameters():
        if param_part(name) in frozen:
            param.requires_grad_(False)

    args = SFTConfig(
        output_dir=str(Path(out_dir) / "checkpoints"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
        weight_decay=settings.weight_decay,
        max_length=settings.max_length,
        assistant_only_loss=True,
        bf16=on_cuda,
        use_cpu=not on_cuda,
        # transformers 5.23 renamed gradient_checkpointing (TRL's default: True) to activation_checkpointing
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if settings.gradient_checkpointing else None,
        deepspeed=deepspeed,
        report_to="none",
        logging_steps=settings.logging_steps,
        # by the clock (checkpoint_timer, below) unless save_steps is given
        **(
            {"save_strategy": "steps", "save_steps": settings.save_steps}
            if settings.save_steps
            else {"save_strategy": "no"}
        ),
        save_total_limit=1,
        seed=settings.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # frozen parts have no gradients; nothing else goes unused
        disable_tqdm=progress is not None,
    )
    cache = _install_vision_cache(model, processor, settings) if settings.vision_cache else None
    collator = TrainingCollator(
        processor,
        max_length=settings.max_length,
        packing=settings.packing,
        pack_length=_packed_attention(model, settings.pack_length) if settings.packing else None,
        image_keys=cache is not None,
    )
    trainer = _sft_trainer_class()(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=build_dataset(samples),
        processing_class=processor,
        peft_config=_lora_config(settings.lora, train_vision) if settings.lora else None,
        callbacks=[
            *([_progress_callback(progress)] if progress else []),
            *([checkpoint_timer(settings.save_minutes)] if settings.save_steps is None else []),
        ],
    )
    if progress is not None:  # mixlab draws its own progress bar; keep the Trainer's loss dicts out of the terminal
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.vision_cache = cache
    trainer.part_lrs = {
        LM: settings.learning_rate,
        PROJECTOR: settings.projector_lr or settings.learning_rate,
        VISION: settings.vision_lr or 0.0,
    }
    return trainer, collator, processor


def _packed_attention(model: Any, pack_length: int | None) -> int | None:
    """Set the language model's attention for packed rows; returns the collator's pack_length.

    flash-attn and mixlab's per-sample sdpa (put in place of sdpa) attend within each sample at the cost of that
    sample alone, so the whole batch goes in one row (no padding at all); flash-attn reads the packing only from a
    single row. eager builds a block-diagonal mask over each row: by default its rows are as wide as the batch's
    longest sample.
    """
    from mixlab.models.packing import PACKED_SDPA, register_packed_sdpa

    attn = model.config.get_text_config()._attn_implementation
    if attn == "sdpa":
        model.set_attn_implementation({"text_config": register_packed_sdpa()})
        attn = PACKED_SDPA
    if attn in ("flash_attention_2", "flash_attention_3"):
        if pack_length is not None:
            raise UserError(
                f"[trainer] pack_length is set, but {attn} reads packed samples only from one row per batch: drop "
                "pack_length (the whole batch then goes in one row)."
            )
        return ONE_ROW
    if attn == PACKED_SDPA:
        return pack_length or ONE_ROW
    if attn == "eager":
        return pack_length
    raise UserError(
        f"[trainer] packing = true works with the sdpa, eager and flash_attention_2 attention kernels, not {attn!r}: "
        'set attn_implementation = "sdpa" (or "auto"), or packing = false.'
    )


def _install_vision_cache(model: Any, processor: Any, settings: SFTSettings) -> Any:
    """A VisionFeatureCache put on the model; a UserError where the tower could give different outputs per call."""
    from mixlab.training.vision_cache import VisionFeatureCache, llava_core, tower_namespace

    core = llava_core(model)
    vision_config = core.vision_tower.config
    dropout = max(float(getattr(vision_config, k, 0.0) or 0.0) for k in ("dropout", "attention_dropout"))
    if dropout > 0:
        raise UserError(
            f"vision_cache = true, but the vision tower has dropout {dropout}: its features change from step to step, "
            "so they cannot be cached. Set vision_cache = false."
        )
    folder = Path(settings.vision_cache_dir) if settings.vision_cache_dir else None
    cache = VisionFeatureCache(tower_namespace(core, processor), folder)
    cache.install(model)
    return cache


def _merge_saved_adapter(base_model: Path, adapter_dir: Path) -> Any:
    """The base model with the saved adapter merged in, on the CPU.

    Rebuilt from the files rather than from the trainer's model, whose weights under DeepSpeed ZeRO-3 are shards.
    """
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mixlab.models.loading import device_kind, model_dtype

    base = AutoModelForImageTextToText.from_pretrained(base_model, dtype=model_dtype(device_kind()))
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def train_llava(
    samples: list[Sample],
    base_model: Path,
    out_dir: Path,
    settings: SFTSettings,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune `base_model` on `samples`; the result goes to out_dir/"model" (and out_dir/"adapter" with LoRA).

    Resumes from the last checkpoint in out_dir/"checkpoints" when there is one, and deletes the checkpoints after
    success. Returns {"train_loss", "steps", "seconds", "tokens_per_second", "samples", "resumed_from"}, and with
    vision_cache {"vision_features": {"computed", "reused"}} (tower runs saved = reused).
    """
    from transformers.trainer_utils import get_last_checkpoint

    out_dir = Path(out_dir)
    ckpt_dir, model_dir, adapter_dir = out_dir / "checkpoints", out_dir / "model", out_dir / "adapter"
    trainer, collator, processor = make_trainer(samples, base_model, out_dir, settings, progress)

    resume = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = float(result.metrics.get("train_runtime", time.perf_counter() - started))

    # under several processes (torchrun, DeepSpeed) every rank takes part in save_model; only rank 0 writes files
    accelerator, main = trainer.accelerator, trainer.is_world_process_zero()
    if main and model_dir.exists():
        shutil.rmtree(model_dir)
    accelerator.wait_for_everyone()
    if settings.lora:
        trainer.save_model(str(adapter_dir))
        accelerator.wait_for_everyone()
        if main:
            _merge_saved_adapter(base_model, adapter_dir).save_pretrained(model_dir)
            processor.save_pretrained(model_dir)
    else:
        trainer.save_model(str(model_dir))
        if main:
            processor.save_pretrained(model_dir)
            (model_dir / "training_args.bin").unlink(missing_ok=True)  # pickled run settings: not part of the model
    accelerator.wait_for_everyone()
    if main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    tokens = _all_ranks_sum(accelerator, collator.tokens_seen)

    stats = {
        "train_loss": float(result.training_loss),
        "steps": int(trainer.state.global_step),
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "processes": accelerator.num_processes,
        "samples": len(samples),
        "resumed_from": resume,
    }
    cache = getattr(trainer, "vision_cache", None)
    if cache is not None:
        stats["vision_features"] = {"computed": cache.computed, "reused": cache.reused}
    return stats


def _all_ranks_sum(accelerator: Any, value: int) -> int:
    """A per-process count summed over every training process (itself on one process)."""
    if accelerator.num_processes == 1:
        return value
    import torch

    return int(accelerator.reduce(torch.tensor([value], device=accelerator.device), reduction="sum").item())
