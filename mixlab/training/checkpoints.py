"""Checkpoints by the clock: one once a set time has passed since the last (or the start), none in a shorter training.

A checkpoint exists for crash-resume, so what matters is how much work a crash can lose, not how many steps a
training has: a fixed share of the steps writes four checkpoints into a two-minute training (each a copy of the
weights and the optimizer state, minutes for a 7B model) and leaves hours between them in a long one. Under
several processes, every process must save at the same step (a sharded save is collective), so the decision is
the first process's clock, shared with the others at each step.
"""

from __future__ import annotations

import time
from typing import Any


def checkpoint_timer(minutes: float) -> Any:
    """A TrainerCallback that asks for a checkpoint at the first step end `minutes` after the training began or the
    last checkpoint was written; never at the last step (the trained model is saved in full right after)."""
    from transformers import TrainerCallback

    class CheckpointTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds = minutes * 60
            self.since = time.monotonic()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.since = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            due = _same_everywhere(time.monotonic() - self.since >= self.seconds, args.device)
            if due and state.global_step < state.max_steps:
                control.should_save = True

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.since = time.monotonic()

    return CheckpointTimer()


def _same_everywhere(flag: bool, device: Any) -> bool:
    """The first process's `flag` in every process (the flag itself when there is one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    shared = torch.tensor([int(flag)], device=device)
    dist.broadcast(shared, src=0)
    return bool(shared.item())
