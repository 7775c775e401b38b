"""A language model's decoder layers, and running its last layer only where its output is read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def decoder_layers(model: Any) -> Any:
    """The language model's decoder layers (``model.model.language_model.layers`` for LLaVA in transformers 5)."""
    candidates = []
    if hasattr(model, "get_decoder"):
        try:
            candidates.append(model.get_decoder())
        except (AttributeError, ValueError, NotImplementedError):
            pass
    inner = getattr(model, "model", None)
    candidates += [getattr(inner, "language_model", None), getattr(model, "language_model", None)]
    for c in candidates:
        for owner in (c, getattr(c, "model", None)):
            layers = getattr(owner, "layers", None)
            if layers is not None and len(layers) and hasattr(layers[0], "self_attn"):
                return layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def tail_modules(model: Any) -> list[Any]:
    """The last decoder layer's parts whose output at a position is read only by that position's own output: the
    attention's query and output projections and the MLP (keys and values are read by later positions, so they
    stay). Empty when the model lacks the output projection or the MLP under those names; the query projection is
    left out where there is none of its own (a fused qkv projection)."""
    try:
        last = decoder_layers(model)[-1]
    except ValueError:
        return []
    attention = getattr(last, "self_attn", None)
    parts = [getattr(attention, "o_proj", None), getattr(last, "mlp", None)]
    if any(p is None for p in parts):
        return []
    query = getattr(attention, "q_proj", None)
    return parts if query is None else [query, *parts]


class LastLayerOnly:
    """Hooks on the last decoder layer's `tail_modules` that, in a thread inside `at(where)`, run those parts only
    at the positions where `where` (a (batch, sequence) bool tensor) is True and give zeros elsewhere.

    Each position's output of the last layer feeds only its own logits, and keys and values come from the layer's
    input, so the logits at those positions are the model's own (the caller reads no others; elsewhere they are
    finite garbage). A scorer that needs the logits at a few positions of each row skips most of the last layer's
    work. The hooks are installed once (`with LastLayerOnly(model) as tail:`) and act per thread, so several threads
    may run the model at once, each with its own positions; outside `at` they leave the model alone. Nothing is
    hooked when `tail_modules` finds no such parts."""

    def __init__(self, model: Any) -> None:
        self.modules = tail_modules(model)
        self.local = threading.local()
        self.handles: list[Any] = []

    def __enter__(self) -> LastLayerOnly:
        for module in self.modules:
            self.handles += [module.register_forward_pre_hook(self._before), module.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    @contextmanager
    def at(self, where: Any) -> Iterator[None]:
        """Within this block, in this thread, the hooked parts run only where `where` is True."""
        self.local.where, self.local.taken = where, []
        try:
            yield
        finally:
            self.local.where = None

    def _before(self, _module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        where = getattr(self.local, "where", None)
        if where is None:
            return None
        fits = bool(args) and tuple(args[0].shape[:-1]) == tuple(where.shape)
        self.local.taken.append(where.to(args[0].device) if fits else None)  # per call in flight
        return (args[0][self.local.taken[-1]], *args[1:]) if fits else None

    def _after(self, _module: Any, _args: Any, output: Any) -> Any:
        if getattr(self.local, "where", None) is None:
            return None
        mask = self.local.taken.pop()
        if mask is None:
            return None
        full = output.new_zeros(*mask.shape, output.shape[-1])
        full[mask] = output
        return full
