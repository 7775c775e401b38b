"""Padding-free batches: a batch's samples packed into rows, each sample with its own position ids.

transformers 5 reads position ids that restart inside a row as packed sequences when no attention mask is given
(``masking_utils.find_packed_sequence_indices``): sdpa and eager get a block-diagonal causal mask, and
flash_attention_2 turns the restarts into the varlen kernel's sequence boundaries (one row). Rotary positions restart
with each sample, so every sample sees exactly what it sees alone. The first token of each packed sample gets the label
-100 (it would otherwise be predicted from the previous sample's last token; alone it is never predicted). LLaVA fills
the ``<image>`` tokens with the image features in row-major order, so the images follow their samples.

The packing is inside one Trainer batch: the steps, the samples of each step and the number of trained tokens (the
loss's denominator) stay those of padded training; only the padding goes.

sdpa with a block-diagonal mask still computes every (query, key) pair of a row, so on sdpa mixlab registers
``PACKED_SDPA``: the language model's attention run as one causal sdpa call per packed sample (the boundaries read off
position_ids), which lets the whole batch go in one row with no padding and no mask, like flash-attn's varlen kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PACKED_SDPA = "mixlab_packed_sdpa"
IGNORE = -100
TEXT_KEYS = ("input_ids", "labels", "token_type_ids", "mm_token_type_ids")
IMAGE_KEYS = ("pixel_values", "image_sizes", "image_keys")
"""Per-image entries of a batch, one row per image in sample order; packed in the samples' new order."""


@dataclass(frozen=True)
class Span:
    """Where one sample of the batch went: row, first column and token count."""

    sample: int
    row: int
    start: int
    length: int


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row, first-fit decreasing: rows of at most `capacity` tokens (a longer sample is alone)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    rows = [sorted(row) for row in rows]
    return sorted(rows, key=lambda row: row[0])


def pack_batch(
    batch: dict[str, Any], images_per_sample: list[int], pad_token_id: int, pack_length: int | None = None
) -> tuple[dict[str, Any], list[Span]]:
    """A right-padded batch (input_ids, attention_mask, labels, images) as packed rows with position_ids.

    Rows hold at most `pack_length` tokens (None: the batch's longest sample, so no row is wider than the padded
    batch was). The result has no attention_mask (transformers then reads the packing from position_ids); the rest
    of a row is padding, a block of its own with labels -100.
    """
    import torch

    unknown = set(batch) - {*TEXT_KEYS, *IMAGE_KEYS, "attention_mask"}
    if unknown:
        from mixlab.errors import UserError

        raise UserError(
            f"packing = true does not know where this processor's batch entries {sorted(unknown)} go in packed rows: "
            "set packing = false for this model."
        )
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(1).tolist()
    if any(not bool(mask[i, :n].all()) for i, n in enumerate(lengths)):
        raise ValueError("packing needs right-padded batches")
    rows = plan_rows(lengths, pack_length or max(lengths))
    width = max(sum(lengths[i] for i in row) for row in rows)

    input_ids = batch["input_ids"]
    shape = (len(rows), width)
    out: dict[str, Any] = {
        "input_ids": torch.full(shape, pad_token_id, dtype=input_ids.dtype),
        "labels": torch.full(shape, IGNORE, dtype=batch["labels"].dtype),
        "position_ids": torch.zeros(shape, dtype=torch.long),
    }
    for key in ("token_type_ids", "mm_token_type_ids"):
        if key in batch:
            out[key] = torch.zeros(shape, dtype=batch[key].dtype)
    spans: list[Span] = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = lengths[i]
            end = start + n
            for key in ("input_ids", "token_type_ids", "mm_token_type_ids"):
                if key in batch:
                    out[key][r, start:end] = batch[key][i, :n]
            out["labels"][r, start:end] = batch["labels"][i, :n]
            out["labels"][r, start] = IGNORE
            out["position_ids"][r, start:end] = torch.arange(n)
            spans.append(Span(i, r, start, n))
            start = end
        out["position_ids"][r, start:] = torch.arange(width - start)  # the padding: a block of its own

    order = [i for row in rows for i in row]
    first = [sum(images_per_sample[:i]) for i in range(len(images_per_sample))]
    image_order = [first[i] + k for i in order for k in range(images_per_sample[i])]
    for key in IMAGE_KEYS:
        if key not in batch:
            continue
        value = batch[key]
        if len(value) != sum(images_per_sample):
            from mixlab.errors import UserError

            raise UserError(
                f"packing = true needs one {key} entry per image, but this processor gives {len(value)} for "
                f"{sum(images_per_sample)} images: set packing = false for this model."
            )
        out[key] = [value[j] for j in image_order] if isinstance(value, list) else value[image_order]
    return out, spans


_segments_memo: list[Any] = [None, None]
"""(position_ids tensor, its segments): read once per forward, then reused by every layer."""


def _segments(position_ids: Any, rows: int) -> list[list[tuple[int, int]]]:
    """(start, end) of each sample in each row: a new one starts wherever the position does not go up by one."""
    import torch

    if _segments_memo[0] is position_ids:
        return _segments_memo[1]
    pos = position_ids.detach().to("cpu").expand(rows, -1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    width = pos.shape[1]
    out = []
    for row in starts:
        first = row.nonzero().flatten().tolist()
        out.append(list(zip(first, [*first[1:], width], strict=True)))
    _segments_memo[:] = [position_ids, out]
    return out


def packed_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """sdpa, one causal call per packed sample; plain sdpa where there is a mask, a cache or no position_ids."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    same_length = query.shape[2] == key.shape[2] == (position_ids.shape[-1] if position_ids is not None else -1)
    if attention_mask is not None or not same_length or not getattr(module, "is_causal", True):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    segments = _segments(position_ids, query.shape[0])
    rows = []
    for b, row in enumerate(segments):
        parts = [
            sdpa_attention_forward(
                module,
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                None,
                dropout,
                scaling,
                is_causal=True,
            )[0]
            for s, e in row
        ]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)), None


def _packed_sdpa_mask(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """No mask for packed or unpadded batches (packed_sdpa_attention splits them); sdpa's mask for padded ones."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    # transformers calls mask functions with keywords only, so args never holds an attention_mask too
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)  # type: ignore[misc]


def register_packed_sdpa() -> str:
    """Register PACKED_SDPA with transformers (attention and mask); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, _packed_sdpa_mask)
    return PACKED_SDPA
