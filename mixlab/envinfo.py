"""`mixlab env`: versions, accelerators and plugins, for bug reports."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

PACKAGES = (
    "mixlab", "torch", "transformers", "trl", "accelerate", "datasets", "peft", "deepspeed", "flash-attn",
    "faiss-cpu", "lm-eval", "lmms-eval", "submitit", "pydantic", "pluggy",
)  # fmt: skip


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def gpus() -> list[str]:
    """CUDA device names, or [] without torch or a GPU."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def environment() -> dict[str, Any]:
    """Versions, GPUs and registered plugins (components and commands); ``plugin_error``: why the plugins could not
    load (a broken package), else None."""
    from mixlab.errors import UserError
    from mixlab.registry import get_registry

    try:
        plugins, plugin_error = get_registry().listing(), None
    except UserError as exc:
        plugins, plugin_error = [], str(exc)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: version(p) for p in PACKAGES},
        "gpus": gpus(),
        "plugins": plugins,
        "plugin_error": plugin_error,
    }
