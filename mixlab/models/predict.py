"""Batched inference for evaluators and scorers: greedy answers, option likelihoods, per-sample answer NLL and
pooled activations.

All render prompts with `training_template(processor)`, the template the model is trained with, so that evaluation
sees exactly the format of training. Option likelihoods run each image and prompt once and score the options from
its key/value cache (`choose(..., shared_prefix=False)` is the per-option reference path). That path and the scorers
encode rows without TRL's collator, where this encoding is checked to match it (`_Collate`). docs/benchmarks.md has
the measured speed-ups.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mixlab.data import IMAGE_TOKEN, Sample, sample_to_row
from mixlab.models.collator import IGNORE, VisionCollator, clean_messages, load_image
from mixlab.models.decoder import LastLayerOnly, decoder_layers
from mixlab.models.inflight import batches_at_once, in_flight
from mixlab.models.templates import training_template

if TYPE_CHECKING:
    from PIL import Image

Progress = Callable[[int, int], None]


@dataclass
class PromptItem:
    """One question: its text (an "<image>" marker in it is dropped) and an optional image."""

    text: str
    image: Image.Image | None = None


def _user_message(item: PromptItem) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image"}] if item.image is not None else []
    content.append({"type": "text", "text": item.text.replace(IMAGE_TOKEN, "").strip()})
    return {"role": "user", "content": content}


def _row(item: PromptItem, answer: str | None = None) -> dict[str, Any]:
    messages = [_user_message(item)]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return {"messages": messages, "images": [item.image] if item.image is not None else []}


def _to_device(batch: dict[str, Any], model: Any) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if hasattr(v, "to"):
            v = v.to(model.device)
            if v.is_floating_point():
                v = v.to(model.dtype)
        out[k] = v
    return out


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Dropout off while predicting; the model's mode is restored afterwards."""
    if not model.training:  # already in eval mode: nothing to switch (walking the modules costs on small models)
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train(True)


def _accepts(model: Any, name: str) -> bool:
    """Whether the model's forward takes the keyword `name`."""
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _chunks(n: int, size: int) -> list[range]:
    size = max(1, int(size))
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def generate(
    model: Any,
    processor: Any,
    items: Sequence[PromptItem],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[str]:
    """Greedy answers (decoded, special tokens skipped, stripped), in batches with left padding."""
    import torch

    template = training_template(processor)
    tokenizer = processor.tokenizer
    answers: list[str] = []
    for chunk in _chunks(len(items), batch_size):
        rows = [_row(items[i]) for i in chunk]
        conversations = []
        for row in rows:
            parts = [dict(p) for p in row["messages"][0]["content"]]
            for p in parts:
                if p["type"] == "image":
                    p["image"] = load_image(row["images"][0])
            conversations.append([{"role": "user", "content": parts}])
        inputs = processor.apply_chat_template(
            conversations,
            chat_template=template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left", "add_special_tokens": False},
        )
        inputs = _to_device(dict(inputs), model)
        with torch.inference_mode(), _eval_mode(model):
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        answers.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if progress:
            progress(len(answers), len(items))
    return answers


def _label_logprobs(
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
    if needed.numel() < targets.shape[1] and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = needed.to(model.device)
        targets = targets[:, needed]
    only_where_read = tail.at(trained_positions(labels)) if tail is not None else nullcontext()
    batch = _to_device(batch, model)
    with torch.inference_mode(), _eval_mode(model), only_where_read:
        logits = model(**batch, use_cache=False, **kwargs).logits
        if not kwargs:
            logits = logits[:, :-1]
        targets = targets.to(logits.device)
        keep = targets != IGNORE
        logp = torch.log_softmax(logits.float(), dim=-1)
        token_logp = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        sums = torch.where(keep, token_logp, torch.zeros_like(token_logp)).sum(1)
        greedy = ((logp.argmax(-1) == targets) | ~keep).all(1)
    return (
        sums.double().cpu().numpy(),
        keep.sum(1).cpu().numpy().astype(np.int64),
        greedy.cpu().numpy().astype(bool),
    )


def trained_positions(labels: Any) -> Any:
    """(batch, sequence) bool: the positions whose logits predict a trained token (a label other than -100 at the
    next position)."""
    import torch

    where = torch.zeros(labels.shape, dtype=torch.bool)
    where[:, :-1] = labels[:, 1:] != IGNORE
    return where


def _reference_logprobs(
    model: Any,
    processor: Any,
    items: Sequence[PromptItem],
    continuations: Sequence[str],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[tuple[float, bool]]:
    """The per-option path: every (prompt, continuation) pair collated and run in full, image included."""
    collator = VisionCollator(processor)
    out: list[tuple[float, bool]] = []
    for chunk in _chunks(len(items), batch_size):
        batch = collator([_row(items[i], continuations[i]) for i in chunk])
        sums, _, greedy = _label_logprobs(model, dict(batch))
        out.extend(zip(sums.tolist(), greedy.tolist(), strict=True))
        if progress:
            progress(chunk.stop, len(items))
    return out


def continuation_logprobs(
    model: Any,
    processor: Any,
    items: Sequence[PromptItem],
    continuations: Sequence[str],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    shared_prefix: bool = True,
) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) of each continuation as the assistant's answer to its item.

    The scored tokens are the trained ones (the continuation and the end-of-turn token), as in `choose`. Pairs whose
    items are equal (same text, same image pixels) share one prefix pass (`shared_prefix`, see `choose`).
    """
    if len(items) != len(continuations):
        raise ValueError(f"{len(items)} items but {len(continuations)} continuations")
    if not shared_prefix:
        return _reference_logprobs(model, processor, items, continuations, batch_size=batch_size, progress=progress)
    members: dict[tuple[Any, ...], list[int]] = {}
    for i, item in enumerate(items):
        members.setdefault(_item_key(item), []).append(i)
    groups = [(items[idx[0]], [continuations[i] for i in idx]) for idx in members.values()]
    scored = _shared_prefix_logprobs(model, processor, groups, batch_size=batch_size, progress=progress)
    out: list[tuple[float, bool]] = [(0.0, False)] * len(items)
    for idx, group_scores in zip(members.values(), scored, strict=True):
        for i, score in zip(idx, group_scores, strict=True):
            out[i] = score
    return out


def choose(
    model: Any,
    processor: Any,
    items: Sequence[PromptItem],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    shared_prefix: bool = True,
) -> list[int]:
    """For each item, the index of the option with the highest total log-likelihood as the assistant's answer.

    The scored tokens are the trained ones (the option text and the end-of-turn token), as in training.
    Ties go to the lowest index; an item without options gets -1. `progress(done, total)` counts (item, option) pairs.
    `shared_prefix` (default): each image and prompt run once (questions on the same image share the image's pass)
    and the options are scored from their key/value cache; False: every (item, option) pair runs in full, image
    included (the reference path; the same scores within float error, relative 1e-5 in float32).
    `batch_size` bounds the rows of every forward pass: images, questions or options (pairs on the reference path);
    the shared path holds the key/value cache of up to `batch_size` questions, plus that of one pass of options.
    """
    if len(items) != len(options):
        raise ValueError(f"{len(items)} items but {len(options)} option lists")
    if shared_prefix:
        kept = [i for i, opts in enumerate(options) if opts]
        scored = _shared_prefix_logprobs(
            model, processor, [(items[i], list(options[i])) for i in kept], batch_size=batch_size, progress=progress
        )
        per_item: dict[int, list[float]] = {i: [lp for lp, _ in s] for i, s in zip(kept, scored, strict=True)}
        return [int(np.argmax(per_item[i])) if i in per_item else -1 for i in range(len(items))]
    pairs = [(items[i], opt) for i, opts in enumerate(options) for opt in opts]
    flat = _reference_logprobs(
        model, processor, [p[0] for p in pairs], [p[1] for p in pairs], batch_size=batch_size, progress=progress
    )
    scores = np.array([logprob for logprob, _ in flat], dtype=np.float64)
    picks, k = [], 0
    for opts in options:
        picks.append(int(np.argmax(scores[k : k + len(opts)])) if opts else -1)
        k += len(opts)
    return picks


# ---- encoding without the collator: the same ids, labels and pixel values, less work ---------------------------
#
# `VisionCollator` (TRL's collator) runs the processor once per batch on every row: chat template, tokenizer, image
# processing and text expansion. `_collate` gets the same ids and labels from one batched
# `tokenizer.apply_chat_template` call with each image left as its placeholder token, expanded afterwards into the
# image's tokens (computed once per image size), and the pixel values from one processor call over the batch's images.
# It is checked against `VisionCollator` on the first row of each kind (without / with an image) for each processor
# and template, and not used where it differs.


class _Unsupported(Exception):
    """The processor does not encode the way `_collate` reproduces."""


def _image_token_of(processor: Any) -> tuple[str | None, int | None]:
    token = getattr(processor, "image_token", None)
    if not isinstance(token, str):
        return None, None
    return token, processor.tokenizer.convert_tokens_to_ids(token)


def _tokenize_chats(
    processor: Any, template: str, chats: list[list[dict[str, Any]]]
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each chat, as the chat template and the tokenizer make them; an image is one placeholder id."""
    enc = processor.tokenizer.apply_chat_template(
        chats, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return [
        (list(ids), [t if m else IGNORE for t, m in zip(ids, mask, strict=True)])
        for ids, mask in zip(enc["input_ids"], enc["assistant_masks"], strict=True)
    ]


class _Images:
    """Image-token expansions (per image size) and pixel inputs, from the processor's own image processing.

    Holds no reference to the processor, so that `_IMAGES` can keep one per processor without keeping it alive."""

    def __init__(self, processor: Any) -> None:
        self.token, self.token_id = _image_token_of(processor)
        tokenizer = processor.tokenizer
        self.special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
        }
        self.expansions: dict[tuple[int, int], list[int]] = {}

    def expansion(self, processor: Any, image: Any) -> list[int]:
        """The ids that the placeholder of `image` expands to, by image size (the processors' rule).

        Only expansions made of special tokens are accepted: those tokenize the same in any context, so expanding
        the placeholder after tokenizing equals tokenizing the expanded text."""
        if image.size not in self.expansions:
            if self.token is None:
                raise _Unsupported("the processor names no image token")
            enc = processor(text=[self.token], images=[[image]], add_special_tokens=False)
            ids = list(enc["input_ids"][0])
            if not ids or not set(ids) <= self.special:
                raise _Unsupported("the image expands to non-special tokens")
            self.expansions[image.size] = ids
        return self.expansions[image.size]

    def expand(
        self, processor: Any, ids: list[int], labels: list[int], pictures: Sequence[Any]
    ) -> tuple[list[int], list[int]]:
        """ids and labels with the image placeholders replaced, in order, by their images' (untrained) tokens."""
        at = [t for t, i in enumerate(ids) if i == self.token_id] if self.token_id is not None else []
        if len(at) != len(pictures):
            raise _Unsupported(f"{len(at)} image placeholders for {len(pictures)} images")
        out_ids: list[int] = []
        out_labels: list[int] = []
        last = 0
        for t, picture in zip(at, pictures, strict=True):
            extra = self.expansion(processor, picture)
            out_ids += ids[last:t] + extra
            out_labels += labels[last:t] + [IGNORE] * len(extra)
            last = t + 1
        return out_ids + ids[last:], out_labels + labels[last:]


def _image_inputs(processor: Any, pictures: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The processor's image inputs (pixel values...) for a batch whose rows hold these images (lists, as
    `VisionCollator` passes them: one per row, empty for a row without images); {} without any image."""
    if not any(pictures):
        return {}
    return dict(processor(images=[list(row) for row in pictures], return_tensors="pt"))


def _pictures(row: dict[str, Any]) -> list[Any]:
    return [load_image(im) for im in (row.get("images") or []) if im is not None]


def _pad(rows: Sequence[Sequence[int]], value: int, *, left: bool) -> tuple[Any, Any]:
    """(ids, mask) of id lists padded with `value` to the longest, on the left or on the right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _pad_id(processor: Any) -> int:
    pad = processor.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def _collate(processor: Any, template: str, images: _Images, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What `VisionCollator(processor)(rows)` returns (right padding, labels -100 where untrained)."""
    pictures = [_pictures(row) for row in rows]
    chats = _tokenize_chats(processor, template, [clean_messages(row["messages"]) for row in rows])
    encoded = [images.expand(processor, ids, labels, pics) for (ids, labels), pics in zip(chats, pictures, strict=True)]
    ids, mask = _pad([e[0] for e in encoded], _pad_id(processor), left=False)
    labels, _ = _pad([e[1] for e in encoded], IGNORE, left=False)
    return {"input_ids": ids, "attention_mask": mask, **_image_inputs(processor, pictures), "labels": labels}


def _matches_reference(processor: Any, template: str, row: dict[str, Any]) -> bool:
    """Whether `_collate` gives `VisionCollator`'s tensors for one row."""
    import torch

    try:
        fast = _collate(processor, template, _Images(processor), [row])
    except _Unsupported:
        return False
    reference = dict(VisionCollator(processor, chat_template=template)([row]))
    return set(fast) == set(reference) and all(
        torch.equal(torch.as_tensor(fast[k]), torch.as_tensor(reference[k])) for k in reference
    )


_VERDICTS: weakref.WeakKeyDictionary[Any, dict[tuple[str, int], bool]] = weakref.WeakKeyDictionary()


def _fast_encoding_ok(processor: Any, template: str, row: dict[str, Any]) -> bool:
    """`_matches_reference`, remembered per processor, template and number of images in the row."""
    key = (template, len(row.get("images") or []))
    try:
        known = _VERDICTS.setdefault(processor, {})
    except TypeError:  # a processor that cannot be weakly referenced: checked on every call
        known = {}
    if key not in known:
        known[key] = _matches_reference(processor, template, row)
    return known[key]


_IMAGES: weakref.WeakKeyDictionary[Any, _Images] = weakref.WeakKeyDictionary()


def _images_of(processor: Any) -> _Images:
    """The processor's `_Images`, kept while the processor lives (its expansions are computed once per size)."""
    try:
        images = _IMAGES.get(processor)
    except TypeError:  # a processor that cannot be weakly referenced
        return _Images(processor)
    if images is None:
        images = _IMAGES[processor] = _Images(processor)
    return images


class _Collate:
    """Rows to model inputs: `_collate` where it matches `VisionCollator` for the row kinds of a batch, else the
    collator itself."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.template = training_template(processor)
        self.images = _images_of(processor)
        self.reference = VisionCollator(processor, chat_template=self.template)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        kinds = {len(row.get("images") or []): row for row in rows}
        if all(_fast_encoding_ok(self.processor, self.template, row) for row in kinds.values()):
            try:
                return _collate(self.processor, self.template, self.images, rows)
            except _Unsupported:
                pass
        return dict(self.reference(rows))


# ---- shared-prefix option scoring ------------------------------------------------------------------------------
#
# The options of a question share everything before the answer, and the questions on one image share the image and
# the template around it. Questions are grouped by image (`_plan`); a chunk of groups is scored in one of two layouts:
# - a tree, one forward pass (attention "sdpa" or "eager", which take a custom 4D mask): one row per group holding
#   the shared ids once (image tokens expanded, with the pixel values), then per question the rest of its prompt and
#   each of its options; the mask lets a token see only its own branch and the positions continue each branch;
# - a growing key/value cache, three passes (other attention kernels, e.g. flash attention, take only 2D masks):
#   1. one row per group: its shared ids, with the pixel values;
#   2. one row per question: the rest of its prompt, on top of its group's row;
#   3. one row per option: the option's ids, on top of its question's row.
#   Rows are left-padded in passes 1 and 2 (the last column holds each row's last token) and right-padded in pass 3.
# Positions are explicit in both, so padding never shifts them. Ids and labels are `_collate`'s, the image once.


def _image_key(image: Any) -> tuple[Any, ...] | None:
    """Equal for images with the same pixels (None without an image)."""
    if image is None:
        return None
    rgb = load_image(image)
    return (rgb.size, hashlib.blake2b(rgb.tobytes(), digest_size=16).digest())


def _item_key(item: PromptItem) -> tuple[Any, ...]:
    """Equal for items that render the same prompt: same text, same image pixels."""
    return (item.text.replace(IMAGE_TOKEN, "").strip(), _image_key(item.image))


@dataclass
class _Question:
    """One item's options as token ids, with the image placeholder not yet expanded."""

    prompt: list[int]  # the ids before the first option id, shared by all options
    continuations: list[list[int]]  # per option, the ids after the prompt
    labels: list[list[int]]  # per option, its trained ids (IGNORE elsewhere)
    placeholder: int | None  # the index of the image placeholder in prompt


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = min(len(a), len(b))
    return next((t for t in range(n) if a[t] != b[t]), n)


def _encode_questions(
    processor: Any, template: str, groups: Sequence[tuple[PromptItem, list[str]]]
) -> list[_Question | None]:
    """Each item's options tokenized (`_tokenize_chats`) and split where they part; None for an item whose prompt is
    too short to split or holds its image placeholder elsewhere than once (the reference path scores it)."""
    _, image_id = _image_token_of(processor)
    chats = [_row(item, opt)["messages"] for item, opts in groups for opt in opts]
    encoded = iter(_tokenize_chats(processor, template, chats))
    out: list[_Question | None] = []
    for item, opts in groups:
        rows = [next(encoded) for _ in opts]
        first = rows[0][0]
        trained = [next((t for t, lab in enumerate(labels) if lab != IGNORE), len(labels)) for _, labels in rows]
        cut = min([*trained, *(_common_length(ids, first) for ids, _ in rows)])
        prompt = first[:cut]
        placeholder: int | None = None
        if image_id is None:
            ok = item.image is None
        elif item.image is None:
            ok = all(image_id not in ids for ids, _ in rows)
        else:
            ok = sum(ids.count(image_id) for ids, _ in rows) == len(rows) and prompt.count(image_id) == 1
            placeholder = prompt.index(image_id) if ok else None
        ok = ok and cut >= 2 and (placeholder is None or placeholder < cut - 1)  # pass 2 needs an id after the image
        question = _Question(prompt, [ids[cut:] for ids, _ in rows], [lab[cut:] for _, lab in rows], placeholder)
        out.append(question if ok else None)
    return out


def _plan(questions: Sequence[_Question], keys: Sequence[Any], batch_size: int) -> list[list[tuple[int, list[int]]]]:
    """Chunks of at most `batch_size` questions, each a list of (shared length, question indices): the questions on
    one image (or all text-only ones) share their longest common prompt prefix, up to one id before the shortest
    prompt's end and past the image placeholder; groups without such a prefix are split into single questions."""
    by_key: dict[Any, list[int]] = {}
    for q, key in enumerate(keys):
        by_key.setdefault(key, []).append(q)
    groups: list[tuple[int, list[int]]] = []
    for members in by_key.values():
        for start in range(0, len(members), batch_size):
            part = members[start : start + batch_size]
            first = questions[part[0]].prompt
            shared = min(
                min(len(questions[q].prompt) for q in part) - 1,
                *(_common_length(questions[q].prompt, first) for q in part),
            )
            placed = all((questions[q].placeholder or 0) < shared for q in part)
            if shared >= 1 and placed:
                groups.append((shared, part))
            else:
                groups += [(len(questions[q].prompt) - 1, [q]) for q in part]
    chunks: list[list[tuple[int, list[int]]]] = []
    count = 0
    for group in groups:
        if not chunks or count + len(group[1]) > batch_size:
            chunks.append([])
            count = 0
        chunks[-1].append(group)
        count += len(group[1])
    return chunks


def _select_rows(cache: Any, rows: Any) -> Any:
    """A copy of a key/value cache holding only the given batch rows, in that order (repeats allowed)."""
    import copy

    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    device = next((layer.keys.device for layer in cache.layers if getattr(layer, "keys", None) is not None), None)
    out.batch_select_indices(rows.to(device) if device is not None else rows)
    return out


class _Extend:
    """One forward pass that extends a key/value cache by a batch of id rows at explicit positions."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache_arg = "cache" if _accepts(model, "cache") else "past_key_values"  # renamed in transformers 5.x
        self.keep_arg = _accepts(model, "logits_to_keep")

    def __call__(self, ids: Any, mask: Any, positions: Any, cache: Any, *, last_only: bool, **extra: Any) -> Any:
        """Logits of every new position, or of the last column only; `mask` covers the cache and the new ids."""
        kwargs: dict[str, Any] = {self.cache_arg: cache, "use_cache": True}
        if last_only and self.keep_arg:
            kwargs["logits_to_keep"] = 1
        batch = _to_device({"input_ids": ids, "attention_mask": mask, "position_ids": positions, **extra}, self.model)
        logits = self.model(**batch, **kwargs).logits
        return logits[:, -1] if last_only else logits


def _sum_logprobs(predict: Any, labels: Any) -> list[tuple[float, bool]]:
    """Per row, (sum of log-probs, all greedy) of the trained labels, `predict[:, t]` being the logits for token t."""
    import torch

    labels = labels.to(predict.device)
    keep = labels != IGNORE
    logp = torch.log_softmax(predict.float(), dim=-1)
    token_logp = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    sums = torch.where(keep, token_logp, torch.zeros_like(token_logp)).sum(1)
    greedy = ((logp.argmax(-1) == labels) | ~keep).all(1)
    return list(zip(sums.tolist(), greedy.tolist(), strict=True))


def _score_chunk(
    extend: _Extend,
    processor: Any,
    images: _Images,
    questions: Sequence[_Question],
    pictures: Sequence[Any],
    chunk: list[tuple[int, list[int]]],
    batch_size: int,
) -> dict[int, list[tuple[float, bool]]]:
    """The three passes over one chunk of (shared length, question indices) groups; scores by question index."""
    import torch
    from transformers import DynamicCache

    # 1. one row per group: its shared ids, image tokens expanded, with the pixel values
    heads = [
        (shared, questions[part[0]], [pictures[part[0]]] if pictures[part[0]] is not None else [])
        for shared, part in chunk
    ]
    rows1 = [images.expand(processor, q.prompt[:shared], [IGNORE] * shared, pics)[0] for shared, q, pics in heads]
    pad_id = _pad_id(processor)
    ids1, mask1 = _pad(rows1, pad_id, left=True)
    cache = DynamicCache()
    extra = _image_inputs(processor, [pics for _, _, pics in heads])
    extend(ids1, mask1, (mask1.cumsum(1) - 1).clamp_min(0), cache, last_only=True, **extra)

    # 2. one row per question: the rest of its prompt; its last column predicts the first option id
    order = [q for _, part in chunk for q in part]
    owner1 = torch.tensor([g for g, (_, part) in enumerate(chunk) for _ in part])
    ids2, mask2 = _pad([questions[q].prompt[shared:] for shared, part in chunk for q in part], pad_id, left=True)
    mask12 = torch.cat([mask1[owner1], mask2], dim=1)
    positions2 = mask1.sum(1)[owner1, None] + (mask2.cumsum(1) - 1).clamp_min(0)
    cache = _select_rows(cache, owner1)
    last = extend(ids2, mask12, positions2, cache, last_only=True)

    # 3. one row per option, at most batch_size rows a pass
    pairs = [
        (r, ids, labels)
        for r, q in enumerate(order)
        for ids, labels in zip(questions[q].continuations, questions[q].labels, strict=True)
    ]
    length12 = mask12.sum(1)
    flat: list[tuple[float, bool]] = []
    for sub in _chunks(len(pairs), batch_size):
        owner2 = torch.tensor([pairs[i][0] for i in sub])
        ids3, mask3 = _pad([pairs[i][1] for i in sub], pad_id, left=False)
        labels3, _ = _pad([pairs[i][2] for i in sub], IGNORE, left=False)
        positions3 = length12[owner2, None] + torch.arange(ids3.shape[1])[None, :]
        mask = torch.cat([mask12[owner2], mask3], dim=1)
        logits = extend(ids3, mask, positions3, _select_rows(cache, owner2), last_only=False)
        # the logits for option id t: the question's last column for t = 0, else option position t - 1
        predict = torch.cat([last[owner2.to(last.device), None], logits[:, :-1]], dim=1)
        flat += _sum_logprobs(predict, labels3)
    out: dict[int, list[tuple[float, bool]]] = {}
    k = 0
    for q in order:
        n = len(questions[q].continuations)
        out[q], k = flat[k : k + n], k + n
    return out


def _tree_masks(model: Any) -> bool:
    """Whether the language model's attention takes a custom 4D mask (sdpa, eager) for the one-pass tree layout."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


def _tree_attention(branches: list[list[int]], options: list[list[int]], dtype: Any) -> Any:
    """The additive 4D mask (rows, 1, n, n) of tree rows: a token sees the earlier tokens of the shared part (branch
    -1), of its own question's prompt (same branch, option -1) and of its own option; padding sees only itself."""
    import torch

    width = max(len(b) for b in branches)
    branch = torch.full((len(branches), width), -2, dtype=torch.long)  # padding: a branch of its own
    option = torch.full((len(branches), width), -1, dtype=torch.long)
    for r, (b, o) in enumerate(zip(branches, options, strict=True)):
        branch[r, : len(b)] = torch.tensor(b, dtype=torch.long)
        option[r, : len(o)] = torch.tensor(o, dtype=torch.long)
    column = torch.arange(width)
    kb, qb, ko, qo = branch[:, None, :], branch[:, :, None], option[:, None, :], option[:, :, None]
    visible = (column[None, None, :] <= column[None, :, None]) & (kb != -2)
    visible &= (kb == -1) | ((kb == qb) & ((ko == -1) | (ko == qo)))
    visible |= torch.eye(width, dtype=torch.bool)[None]
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)[:, None]


def _score_chunk_tree(
    model: Any,
    processor: Any,
    images: _Images,
    questions: Sequence[_Question],
    pictures: Sequence[Any],
    chunk: list[tuple[int, list[int]]],
) -> dict[int, list[tuple[float, bool]]]:
    """One pass over a chunk, one row per group laid out as a tree: the shared ids (image tokens expanded), then per
    question the rest of its prompt followed by each of its options. The mask lets a token see only its own branch
    (the shared ids, its question's prompt, its own option) and explicit positions continue each branch, so every
    option is scored as if it followed its prompt alone."""
    import torch

    rows: list[list[int]] = []
    positions: list[list[int]] = []
    branches: list[list[int]] = []  # per token: -1 shared, else its question
    options: list[list[int]] = []  # per token: -1 shared or prompt, else its option
    targets: list[tuple[int, list[int], list[int]]] = []  # per option: row, the columns predicting its ids, labels
    order: list[int] = []
    for r, (shared, part) in enumerate(chunk):
        pics = [pictures[part[0]]] if pictures[part[0]] is not None else []
        ids = images.expand(processor, questions[part[0]].prompt[:shared], [IGNORE] * shared, pics)[0]
        base = len(ids)
        pos, branch, option = list(range(base)), [-1] * base, [-1] * base
        for q in part:
            order.append(q)
            rest = questions[q].prompt[shared:]
            ids, pos = ids + rest, pos + list(range(base, base + len(rest)))
            branch, option = branch + [q] * len(rest), option + [-1] * len(rest)
            last, after = len(ids) - 1, base + len(rest)
            for j, (cont, labels) in enumerate(zip(questions[q].continuations, questions[q].labels, strict=True)):
                targets.append((r, [last, *range(len(ids), len(ids) + len(cont) - 1)], labels))
                ids, pos = ids + cont, pos + list(range(after, after + len(cont)))
                branch, option = branch + [q] * len(cont), option + [j] * len(cont)
        rows.append(ids)
        positions.append(pos)
        branches.append(branch)
        options.append(option)
    input_ids, _ = _pad(rows, _pad_id(processor), left=False)
    position_ids, _ = _pad(positions, 0, left=False)
    dtype = model.dtype if model.dtype.is_floating_point else torch.float32
    batch = {
        "input_ids": input_ids,
        "attention_mask": _tree_attention(branches, options, dtype),
        "position_ids": position_ids,
        **_image_inputs(processor, [[pictures[part[0]]] if pictures[part[0]] is not None else [] for _, part in chunk]),
    }
    needed = sorted({c for _, cols, _ in targets for c in cols})
    kwargs: dict[str, Any] = {}
    column = {c: c for c in needed}
    if len(needed) < input_ids.shape[1] and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = torch.tensor(needed, device=model.device)
        column = {c: i for i, c in enumerate(needed)}
    logits = model(**_to_device(batch, model), use_cache=False, **kwargs).logits
    n = max(len(labels) for _, _, labels in targets)
    row_index = torch.tensor([[r] * n for r, _, _ in targets])
    col_index = torch.tensor([[column[c] for c in cols] + [0] * (n - len(cols)) for _, cols, _ in targets])
    labels_, _ = _pad([labels for _, _, labels in targets], IGNORE, left=False)
    flat = _sum_logprobs(logits[row_index.to(logits.device), col_index.to(logits.device)], labels_)
    out: dict[int, list[tuple[float, bool]]] = {}
    k = 0
    for q in order:
        m = len(questions[q].continuations)
        out[q], k = flat[k : k + m], k + m
    return out


_CHECKED: weakref.WeakKeyDictionary[Any, dict[tuple[str, bool], bool]] = weakref.WeakKeyDictionary()


def _agrees_with_reference(model: Any, got: list[tuple[float, bool]], expected: list[tuple[float, bool]]) -> bool:
    """Same scores within float error: relative 1e-4 in float32, looser in half precision (batching alone moves
    bf16 sums by a few hundredths). A model whose forward ignored the positions or the mask would be far off."""
    rtol, atol = (1e-4, 1e-4) if str(getattr(model, "dtype", "")) == "torch.float32" else (2e-2, 0.1)
    return all(abs(a - b) <= atol + rtol * abs(b) for (a, _), (b, _) in zip(got, expected, strict=True))


def _shared_prefix_logprobs(
    model: Any,
    processor: Any,
    groups: Sequence[tuple[PromptItem, list[str]]],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[list[tuple[float, bool]]]:
    """(log-likelihood, is greedy) of each option of each (item, options) group, by the shared layouts above.

    Items that cannot be split (and all items, where `_collate` does not match `VisionCollator` for this processor,
    or where the model's first question scores differently from the reference path) are scored by the reference
    path."""
    import torch

    if not groups:
        return []
    total = sum(len(opts) for _, opts in groups)
    template = training_template(processor)
    images = _images_of(processor)
    pictures = [load_image(item.image) if item.image is not None else None for item, _ in groups]
    questions: list[_Question | None]
    try:
        questions = _encode_questions(processor, template, groups)
        kinds = {pictures[g] is not None: g for g in reversed(range(len(groups))) if questions[g] is not None}
        for g in kinds.values():
            if not _fast_encoding_ok(processor, template, _row(groups[g][0], groups[g][1][0])):
                raise _Unsupported("the encoding differs from VisionCollator's")
        for g, question in enumerate(questions):  # every image size now: an unusable expansion fails here
            if question is not None and pictures[g] is not None:
                images.expansion(processor, pictures[g])
    except _Unsupported:
        questions = [None] * len(groups)
    out: list[list[tuple[float, bool]]] = [[] for _ in groups]
    fallback = [g for g, q in enumerate(questions) if q is None]
    report = (lambda d, _: progress(d, total)) if progress else None
    if fallback:
        for g, scores in zip(
            fallback,
            _reference_groups(model, processor, [groups[g] for g in fallback], batch_size, report),
            strict=True,
        ):
            out[g] = scores
    done = sum(len(groups[g][1]) for g in fallback)
    live = [g for g, q in enumerate(questions) if q is not None]
    if not live:
        return out
    kept = [q for q in questions if q is not None]
    kept_pictures = [pictures[g] for g in live]
    keys = [_image_key(picture) for picture in kept_pictures]
    tree = _tree_masks(model)
    extend = _Extend(model)

    def score(chunk: list[tuple[int, list[int]]]) -> dict[int, list[tuple[float, bool]]]:
        if tree:
            return _score_chunk_tree(model, processor, images, kept, kept_pictures, chunk)
        return _score_chunk(extend, processor, images, kept, kept_pictures, chunk, batch_size)

    with torch.inference_mode(), _eval_mode(model):
        checked = _CHECKED.setdefault(model, {})
        if (template, tree) not in checked:  # once per model: its first question both ways
            item, opts = groups[live[0]]
            first = score(_plan(kept[:1], keys[:1], batch_size)[0])[0]
            checked[(template, tree)] = _agrees_with_reference(
                model, first, _reference_logprobs(model, processor, [item] * len(opts), opts, batch_size=batch_size)
            )
        if not checked[(template, tree)]:
            warnings.warn(
                f"{type(model).__name__}: shared-prefix option scores differ from the per-option ones; "
                "scoring every option in full",
                stacklevel=3,
            )
            return _reference_groups(model, processor, groups, batch_size, progress)
        for chunk in _plan(kept, keys, batch_size):
            by_question = score(chunk)
            for q, scored in by_question.items():
                out[live[q]] = scored
            done += sum(len(scored) for scored in by_question.values())
            if progress:
                progress(done, total)
    return out


def _reference_groups(
    model: Any,
    processor: Any,
    groups: Sequence[tuple[PromptItem, list[str]]],
    batch_size: int,
    progress: Progress | None,
) -> list[list[tuple[float, bool]]]:
    """Every group's options by the reference path."""
    flat = iter(
        _reference_logprobs(
            model,
            processor,
            [item for item, opts in groups for _ in opts],
            [opt for _, opts in groups for opt in opts],
            batch_size=batch_size,
            progress=progress,
        )
    )
    return [[next(flat) for _ in opts] for _, opts in groups]


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
        lambda distinct, chunks: answer_nll_batches(model, processor, distinct, chunks, at_once=at_once),
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
    chunks = [list(c) for c in _chunks(len(unique), batch_size)]
    parts = []
    for chunk, rows in batches_of([samples[i] for i in unique], chunks):
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
    collator = _Collate(processor)

    with _eval_mode(model), LastLayerOnly(model) as tail:

        def prepare(batch: list[int]) -> tuple[dict[str, Any], bool, np.ndarray]:
            rows, where = _distinct_rows(samples, batch)
            collated = collator(rows)
            return collated, _tail_checked(model, collator, rows, collated["labels"], tail), where

        def nll_of(prepared: tuple[dict[str, Any], bool, np.ndarray]) -> np.ndarray:
            collated, only_where_read, where = prepared
            sums, counts, _ = _label_logprobs(model, dict(collated), tail=tail if only_where_read else None)
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
    full, _, _ = _label_logprobs(model, dict(probe))
    only_where_read, _, _ = _label_logprobs(model, dict(probe), tail=tail)
    agree = _agrees_with_reference(
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


# ---- scoring helpers: length bucketing and pooled attention-output activations (COINCIDE) ----------------


def _image_token_id(model: Any, processor: Any) -> int:
    for owner, attr in (
        (model.config, "image_token_id"),
        (model.config, "image_token_index"),
        (processor, "image_token_id"),
    ):
        value = getattr(owner, attr, None)
        if isinstance(value, int):
            return value
    return processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", IMAGE_TOKEN))


def image_token_count(processor: Any, samples: Sequence[Sample]) -> int:
    """How many tokens one image expands to (0 when no sample has an image): collates one image sample to count."""
    first = next((s for s in samples if s.get("image")), None)
    if first is None:
        return 0
    batch = VisionCollator(processor)([sample_to_row(first)])
    image_id = processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", IMAGE_TOKEN))
    return int((batch["input_ids"] == image_id).sum())


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
        lambda distinct, chunks: pooled_activations_batches(
            model, processor, distinct, layers, chunks, text_only=text_only, at_once=at_once
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

    collator = _Collate(processor)

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
                model(**_to_device(collated, model), use_cache=False)
        except _StopForward:
            pass
        finally:
            local.captured = None
        return _pool(captured, layers, is_image, mask & ~is_image, text_only)[where]

    handles = [blocks[layer].self_attn.o_proj.register_forward_hook(hook_for(layer)) for layer in sorted(set(layers))]
    try:
        with _eval_mode(model):
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
