"""Model merging: streamed weight averaging for model soups (the ``soup`` merger builds on it)."""

from mixlab.merging.soup import (
    Checkpoint,
    average,
    check_compatible,
    is_adapter,
    merge_lora,
    running_mean,
)

__all__ = ["Checkpoint", "average", "check_compatible", "is_adapter", "merge_lora", "running_mean"]
