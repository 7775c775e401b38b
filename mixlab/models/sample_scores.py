"""Per-sample scores for the scorers: the mean NLL of each sample's trained tokens (perplexity) and pooled
attention-output activations (COINCIDE), batch by batch (the scorers give neighbours in `length_order`), with
`batches_at_once` batches running at a time.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from mixlab.data import IMAGE_TOKEN, Sample, sample_to_row
from mixlab.models.collator import IGNORE, VisionCollator, image_token_id
from mixlab.models.decoder import LastLayerOnly, decoder_layers
from mixlab.models.encoding import Collate
from mixlab.models.forward import Progress, agrees_with_reference, chunks, eval_mode, label_logprobs, to_device
from mixlab.models.inflight import batches_at_once, in_flight


def answer_nll(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    at_once: int | None = None,
) -> np.ndarray:
    """Per-sample mean negative log-likelihood of the trained tokens (training masks, image-conditioned).

    NaN for a sample without any trained token. Samples with the same conversation and image are scored once; the
    distinct ones in batches of `batch_size`, in input order (`answer_nll_batches`).
    """
    scores = _per_sample(
        samples,
        batch_size,
        progress,
        lambda distinct, batches: answer_nll_batches(model, processor, distinct, batches, at_once=at_once),
    )
    return scores if scores is not None else np.empty(0, dtype=np.float64)


def _per_sample(
    samples: Sequence[Sample],
    batch_size: int,
    progress: Progress | None,
    batches_of: Callable[[list[Sample], list[list[int]]], Iterator[tuple[list[int], np.ndarray]]],
) -> np.ndarray | None:
    """The rows that `batches_of(distinct samples, batches)` gives, one per sample of `samples` (samples with the same
    conversation and image share theirs), the distinct ones in batches of `batch_size` in input order; None for no
    samples."""
    unique, where = _distinct(samples)
    batches = [list(c) for c in chunks(len(unique), batch_size)]
    parts = []
    for chunk, rows in batches_of([samples[i] for i in unique], batches):
        parts.append(rows)
        if progress:
            progress(int(np.count_nonzero(where <= chunk[-1])), len(samples))
    return np.concatenate(parts)[where] if parts else None


def _distinct_rows(samples: Sequence[Sample], batch: list[int]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """(training rows of the distinct samples of `batch`, the distinct row of each of its samples)."""
    unique, where = _distinct([samples[i] for i in batch])
    return [sample_to_row(samples[batch[i]]) for i in unique], where


def answer_nll_batches(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    batches: Sequence[list[int]],
    *,
    at_once: int | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """(batch, the mean NLL of its samples' trained tokens) for each index list in `batches`, in order, as each is
    done (a caller can keep every batch's results before the next one comes).

    Samples of one batch with the same conversation and image are scored once. Batches run `batches_at_once(model,
    at_once)` at a time (`in_flight`). The last decoder layer runs its position-wise parts only where a trained token
    is predicted, once a probe of two samples has given the full forward's scores that way (checked once per
    architecture; else every position runs).
    """
    collator = Collate(processor)

    with eval_mode(model), LastLayerOnly(model) as tail:

        def prepare(batch: list[int]) -> tuple[dict[str, Any], bool, np.ndarray]:
            rows, where = _distinct_rows(samples, batch)
            collated = collator(rows)
            return collated, _tail_checked(model, collator, rows, collated["labels"], tail), where

        def nll_of(prepared: tuple[dict[str, Any], bool, np.ndarray]) -> np.ndarray:
            collated, only_where_read, where = prepared
            sums, counts, _ = label_logprobs(model, dict(collated), tail=tail if only_where_read else None)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(counts > 0, -sums / np.maximum(counts, 1), np.nan)[where]

        yield from in_flight(batches, prepare, nll_of, at_once=batches_at_once(model, at_once))


_TAIL_CHECKED: dict[tuple[type, type], bool] = {}


def _tail_checked(model: Any, collator: Any, rows: list[dict[str, Any]], labels: Any, tail: LastLayerOnly) -> bool:
    """Whether `answer_nll_batches` may run the last layer only at trained positions (`tail`, installed). That is a
    property of the architecture, so it is decided once per (model class, decoder layer class), on the first two rows
    with trained tokens scored both ways; False until such rows come."""
    if not tail.modules:
        return False
    key = (type(model), type(decoder_layers(model)[-1]))
    if key in _TAIL_CHECKED:
        return _TAIL_CHECKED[key]
    trained = (labels != IGNORE).any(1).nonzero().squeeze(1).tolist()[:2]
    if not trained:
        return False
    probe = collator([rows[i] for i in trained])
    full, _, _ = label_logprobs(model, dict(probe))
    only_where_read, _, _ = label_logprobs(model, dict(probe), tail=tail)
    agree = agrees_with_reference(
        model, [(t, True) for t in only_where_read.tolist()], [(f, True) for f in full.tolist()]
    )
    if not agree:
        warnings.warn(
            f"{type(model).__name__}: scores with the last layer run at trained positions only differ from the "
            "full forward's; running every position",
            stacklevel=3,
        )
    _TAIL_CHECKED[key] = agree
    return agree


def _distinct(samples: Sequence[Sample]) -> tuple[list[int], np.ndarray]:
    """(index of the first sample of each distinct (conversation, image), the distinct row of every sample)."""
    import json

    first: dict[str, int] = {}
    where = np.empty(len(samples), dtype=np.int64)
    unique: list[int] = []
    for i, s in enumerate(samples):
        key = json.dumps([s["conversations"], s.get("image") or None], sort_keys=True, default=str)
        if key not in first:
            first[key] = len(unique)
            unique.append(i)
        where[i] = first[key]
    return unique, where


# ---- length order, and pooled attention-output activations (COINCIDE) -----------------------------------


def _image_token_id(model: Any, processor: Any) -> int:
    """The image token id as the model's config names it, else as the processor does."""
    for owner, attr in (
        (model.config, "image_token_id"),
        (model.config, "image_token_index"),
        (processor, "image_token_id"),
    ):
        value = getattr(owner, attr, None)
        if isinstance(value, int):
            return value
    return image_token_id(processor)


def image_token_count(processor: Any, samples: Sequence[Sample]) -> int:
    """How many tokens one image expands to (0 when no sample has an image): collates one image sample to count."""
    first = next((s for s in samples if s.get("image")), None)
    if first is None:
        return 0
    batch = VisionCollator(processor)([sample_to_row(first)])
    return int((batch["input_ids"] == image_token_id(processor)).sum())


def length_order(processor: Any, samples: Sequence[Sample]) -> list[int]:
    """Sample indices sorted by estimated sequence length (text tokens + image tokens); stable on ties.

    Batching neighbours of this order keeps padding small; the estimate tokenizes the raw turns, without template.
    """
    if not samples:
        return []
    texts = [" ".join(t["value"].replace(IMAGE_TOKEN, "") for t in s["conversations"]) for s in samples]
    lengths = [len(ids) for ids in processor.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    per_image = image_token_count(processor, samples)
    estimate = [n + (per_image if s.get("image") else 0) for n, s in zip(lengths, samples, strict=True)]
    return sorted(range(len(samples)), key=lambda i: (estimate[i], i))


class _StopForward(Exception):
    """Raised by the hook on the deepest wanted layer: the rest of the network is not needed."""


TextOnlyRule = Literal["zero_image", "text_twice"]


def _unit(x: Any) -> Any:
    """Row-wise L2 normalisation; rows of zeros (or NaN) stay zero."""
    import torch

    x = torch.nan_to_num(x, nan=0.0)
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp_min(1e-30), torch.zeros_like(x))


def pooled_activations(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    layers: Sequence[int],
    *,
    text_only: TextOnlyRule = "zero_image",
    batch_size: int = 16,
    progress: Progress | None = None,
    at_once: int | None = None,
) -> np.ndarray:
    """COINCIDE embeddings: per layer, the self-attention ``o_proj`` output averaged over image tokens and over
    text tokens separately, tanh, L2-normalised; concatenated layer-major [l0_img, l0_txt, l1_img, ...] and divided
    by sqrt(2·n_layers), so each row has unit norm. Shape (n, 2·len(layers)·hidden), float32.

    Image tokens are the positions holding the image token id (after the processor expands ``<image>``); text tokens
    are all other non-padding positions (system, user and assistant text of the chat template). For a sample
    without image tokens, ``text_only`` decides: "zero_image" leaves the image blocks at zero and scales the text
    blocks by 1/sqrt(n_layers) (unit norm); "text_twice" puts the text block in the image slot too.
    Layers after the deepest chosen one are not computed; samples with the same conversation and image run once;
    the distinct ones in batches of `batch_size`, in input order (`pooled_activations_batches`).
    """
    rows = _per_sample(
        samples,
        batch_size,
        progress,
        lambda distinct, batches: pooled_activations_batches(
            model, processor, distinct, layers, batches, text_only=text_only, at_once=at_once
        ),
    )
    if rows is None:
        width = 2 * len(layers) * int(model.config.get_text_config().hidden_size)
        return np.zeros((0, width), dtype=np.float32)
    return rows


def pooled_activations_batches(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    layers: Sequence[int],
    batches: Sequence[list[int]],
    *,
    text_only: TextOnlyRule = "zero_image",
    at_once: int | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """(batch, its samples' `pooled_activations` rows) for each index list in `batches`, in order, as each is done.
    Samples of one batch with the same conversation and image run once; batches run `batches_at_once(model, at_once)`
    at a time (`in_flight`)."""
    import torch

    if text_only not in ("zero_image", "text_twice"):
        raise ValueError(f"text_only must be 'zero_image' or 'text_twice', got {text_only!r}")
    layers = [int(layer) for layer in layers]
    blocks = decoder_layers(model)
    if not layers or min(layers) < 0 or max(layers) >= len(blocks):
        raise ValueError(f"layers {layers} out of range for a {len(blocks)}-layer language model")
    image_id = _image_token_id(model, processor)
    deepest = max(layers)
    local = threading.local()  # each thread's captured outputs, so that batches may run at once

    def hook_for(layer: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            captured = getattr(local, "captured", None)
            if captured is None:  # a forward pass of another caller
                return
            captured[layer] = output
            if layer == deepest:
                raise _StopForward

        return hook

    collator = Collate(processor)

    def prepare(batch: list[int]) -> tuple[dict[str, Any], np.ndarray]:
        rows, where = _distinct_rows(samples, batch)
        collated = dict(collator(rows))
        collated.pop("labels", None)
        return collated, where

    def embed(prepared: tuple[dict[str, Any], np.ndarray]) -> np.ndarray:
        collated, where = prepared
        mask = collated["attention_mask"].bool()
        is_image = (collated["input_ids"] == image_id) & mask
        captured: dict[int, Any] = {}
        local.captured = captured
        try:
            with torch.inference_mode():
                model(**to_device(collated, model), use_cache=False)
        except _StopForward:
            pass
        finally:
            local.captured = None
        return _pool(captured, layers, is_image, mask & ~is_image, text_only)[where]

    handles = [blocks[layer].self_attn.o_proj.register_forward_hook(hook_for(layer)) for layer in sorted(set(layers))]
    try:
        with eval_mode(model):
            yield from in_flight(batches, prepare, embed, at_once=batches_at_once(model, at_once))
    finally:
        for h in handles:
            h.remove()


def _pool(captured: dict[int, Any], layers: list[int], is_image: Any, is_text: Any, text_only: str) -> np.ndarray:
    """The embedding rows of one batch from its captured ``o_proj`` outputs (see `pooled_activations`); pooled on the
    model's device, so only (batch, hidden) vectors come back."""
    import torch

    device = captured[max(layers)].device
    img_w, txt_w = is_image.to(device, torch.float32), is_text.to(device, torch.float32)
    has_image = is_image.any(dim=1).to(device)
    parts = []
    for layer in layers:
        act = captured[layer].float()
        a_img = _unit(torch.tanh((act * img_w[..., None]).sum(1) / img_w.sum(1, keepdim=True).clamp_min(1)))
        a_txt = _unit(torch.tanh((act * txt_w[..., None]).sum(1) / txt_w.sum(1, keepdim=True).clamp_min(1)))
        if text_only == "text_twice":
            a_img = torch.where(has_image[:, None], a_img, a_txt)
        else:
            a_img = torch.where(has_image[:, None], a_img, torch.zeros_like(a_img))
            a_txt = torch.where(has_image[:, None], a_txt, a_txt * np.sqrt(2.0))
        parts += [a_img, a_txt]
    return (torch.cat(parts, dim=1) / np.sqrt(2.0 * len(layers))).cpu().numpy().astype(np.float32)
