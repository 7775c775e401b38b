"""The tiny preset's pretraining loop, shared by the vision tower's and the language model's pretraining."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def train_steps(
    params: Iterable[Any],
    learning_rate: float,
    steps: int,
    loss_at: Callable[[int], Any],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """AdamW (no weight decay) under a one-cycle schedule (5% warm-up) for ``steps`` steps of ``loss_at(step)``."""
    import torch

    optim = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, learning_rate, total_steps=steps, pct_start=0.05)
    for step in range(steps):
        loss = loss_at(step)
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        if progress:
            progress(step + 1, steps)
