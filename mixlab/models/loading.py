"""Load a LLaVA-style checkpoint and its processor with the right device, dtype and attention kernel."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from mixlab.errors import UserError, first_line
from mixlab.paths import expand_user


def device_kind() -> Literal["cuda", "cpu"]:
    """Return "cuda" when torch sees a CUDA GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dtype(device: str) -> Any:
    """The dtype mixlab keeps a model in on `device`: bf16 on CUDA, fp32 on the CPU."""
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def resolve_attn_implementation(attn_implementation: str = "auto") -> str:
    """The attention kernel for "auto": flash_attention_2 on CUDA with flash_attn installed, else sdpa."""
    if attn_implementation != "auto":
        return attn_implementation
    if device_kind() == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def model_dir_problem(path: Path) -> str | None:
    """What keeps path from being a Hugging Face model folder (a phrase that follows the path), or None: it exists, is
    a folder, has a config.json holding a JSON object, and weights (*.safetensors or *.bin)."""
    import json

    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a model folder"
    config = path / "config.json"
    if not config.is_file():
        return "is not a model folder (no config.json)"
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"has a config.json that cannot be read as JSON ({exc})"
    if not isinstance(parsed, dict):
        return "has a config.json that is not a JSON object"
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        return "has no weights (*.safetensors or *.bin)"
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:  # the header only: cheap for any size, and no torch
            with safe_open(str(weights), framework="numpy"):
                pass
        except Exception as exc:  # SafetensorError, OSError
            return f"has weights that cannot be read: {weights.name} ({first_line(exc)})"
    return None


def _check_model_dir(path: Path) -> None:
    if problem := model_dir_problem(path):
        raise UserError(f"model folder {path} {problem}: give a local Hugging Face model folder.")


def load_model(
    path: str | Path,
    *,
    for_training: bool = False,
    attn_implementation: str = "auto",
    device: str | None = None,
) -> tuple[Any, Any]:
    """Load (model, processor) from a local HF dir: bf16 on CUDA, fp32 on CPU; eval mode unless `for_training`."""
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin

    path = expand_user(path)
    _check_model_dir(path)
    device = device or device_kind()
    dtype = model_dtype(device)
    attn = resolve_attn_implementation(attn_implementation)
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    except (OSError, ValueError, KeyError, ImportError, SafetensorError) as e:  # ImportError: flash-attn missing
        raise UserError(f"cannot load a vision-language model from {path}: {first_line(e)}") from e
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "tokenizer", None) is None:
        raise UserError(
            f"{path} has no multimodal processor (processor_config.json + tokenizer); got {type(processor)}"
        )
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)  # type: ignore[arg-type]  # transformers wraps Module.to with functools.wraps: mypy sees it unbound
    model.train(for_training)
    return model, processor
