"""Running a model for predictions: device moves, eval mode, and the log-likelihood of a batch's trained tokens.

Shared by option scoring (`mixlab.models.options`), generation (`mixlab.models.predict`) and the per-sample scores
(`mixlab.models.sample_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np

from mixlab.models.collator import IGNORE
from mixlab.models.decoder import LastLayerOnly

Progress = Callable[[int, int], None]


def to_device(batch: dict[str, Any], model: Any) -> dict[str, Any]:
    """The batch's tensors on the model's device, floating-point ones in the model's dtype."""
    out = {}
    for k, v in batch.items():
        if hasattr(v, "to"):
            v = v.to(model.device)
            if v.is_floating_point():
                v = v.to(model.dtype)
        out[k] = v
    return out


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while predicting; the model's mode is restored afterwards."""
    if not model.training:  # already in eval mode: nothing to switch (walking the modules costs on small models)
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train(True)


def accepts(model: Any, name: str) -> bool:
    """Whether the model's forward takes the keyword `name`."""
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def chunks(n: int, size: int) -> list[range]:
    """Consecutive index ranges of at most `size` (at least 1) covering range(n)."""
    size = max(1, int(size))
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def label_logprobs(
    model: Any, batch: dict[str, Any], *, tail: LastLayerOnly | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (sum of log-probs, count, all greedy) over the trained (label != -100) tokens of a collated batch.

    "All greedy": every trained token is the model's argmax at its position. Logits are computed only at the positions
    that predict a trained token of some row (`logits_to_keep`), and not at all for a batch without trained tokens.
    `tail` (installed hooks): the last decoder layer's position-wise parts run only at the positions that predict a
    trained token of their row.
    """
    import torch

    labels = batch.pop("labels")
    targets = labels[:, 1:]  # position t predicts token t + 1
    needed = (targets != IGNORE).any(0).nonzero().squeeze(1)
    if needed.numel() == 0:
        n = labels.shape[0]
        return np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)
    kwargs: dict[str, Any] = {}
    if needed.numel() < targets.shape[1] and accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = needed.to(model.device)
        targets = targets[:, needed]
    only_where_read = tail.at(trained_positions(labels)) if tail is not None else nullcontext()
    batch = to_device(batch, model)
    with torch.inference_mode(), eval_mode(model), only_where_read:
        logits = model(**batch, use_cache=False, **kwargs).logits
        if not kwargs:
            logits = logits[:, :-1]
        sums, greedy = summed_logprobs(logits, targets)
    return (
        sums.double().cpu().numpy(),
        (targets != IGNORE).sum(1).cpu().numpy().astype(np.int64),
        greedy.cpu().numpy().astype(bool),
    )


def summed_logprobs(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per row, (sum of log-probs, all greedy) of the trained labels (!= -100), `logits[:, t]` being the logits
    for label t: two tensors on the logits' device."""
    import torch

    labels = labels.to(logits.device)
    keep = labels != IGNORE
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    sums = torch.where(keep, token_logp, torch.zeros_like(token_logp)).sum(1)
    return sums, ((logp.argmax(-1) == labels) | ~keep).all(1)


def trained_positions(labels: Any) -> Any:
    """(batch, sequence) bool: the positions whose logits predict a trained token (a label other than -100 at the
    next position)."""
    import torch

    where = torch.zeros(labels.shape, dtype=torch.bool)
    where[:, :-1] = labels[:, 1:] != IGNORE
    return where


def agrees_with_reference(model: Any, got: list[tuple[float, bool]], expected: list[tuple[float, bool]]) -> bool:
    """Same scores within float error: relative 1e-4 in float32, looser in half precision (batching alone moves
    bf16 sums by a few hundredths). A model whose forward ignored the positions or the mask would be far off."""
    rtol, atol = (1e-4, 1e-4) if str(getattr(model, "dtype", "")) == "torch.float32" else (2e-2, 0.1)
    return all(abs(a - b) <= atol + rtol * abs(b) for (a, _), (b, _) in zip(got, expected, strict=True))
