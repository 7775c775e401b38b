"""Batched inference for evaluators and scorers: greedy answers, option likelihoods, per-sample answer NLL.

All three render prompts with `training_template(processor)`, the template the model is trained with, so that
evaluation sees exactly the format of training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mixlab.data import IMAGE_TOKEN, Sample, sample_to_row
from mixlab.models.collator import IGNORE, VisionCollator, load_image
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


def _label_logprobs(model: Any, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (sum of log-probs, count, all greedy) over the trained (label != -100) tokens of a collated batch.

    "All greedy": every trained token is the model's argmax at its position.
    """
    import torch

    labels = batch.pop("labels")
    batch = _to_device(batch, model)
    with torch.inference_mode(), _eval_mode(model):
        logits = model(**batch, use_cache=False).logits
    labels = labels.to(logits.device)
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    sums, counts, greedy = [], [], []
    for row_logits, row_labels in zip(shift_logits, shift_labels, strict=True):
        keep = row_labels != IGNORE
        logp = torch.log_softmax(row_logits[keep].float(), dim=-1)
        token_logp = logp.gather(-1, row_labels[keep].unsqueeze(-1)).squeeze(-1)
        sums.append(float(token_logp.sum()))
        counts.append(int(keep.sum()))
        greedy.append(bool((logp.argmax(-1) == row_labels[keep]).all()))
    return np.array(sums, dtype=np.float64), np.array(counts, dtype=np.int64), np.array(greedy, dtype=bool)


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
    `shared_prefix` (default): the image and prompt run once per item and the options are scored from its key/value
    cache; False: every (item, option) pair runs in full (the reference path; same scores within float error).
    `batch_size` bounds the (item, option) rows of a forward pass.
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


# ---- shared-prefix option scoring ------------------------------------------------------------------------------
#
# The options of a question share everything before the answer, and the questions on one image share the image and
# the template around it. Scoring runs three passes over a growing key/value cache, each a batch of rows of one kind:
#   1. one row per image: the ids that all its questions share (image tokens included), with the pixel values;
#   2. one row per question: the rest of its prompt, on top of its image's row;
#   3. one row per option: the option's ids (answer and end-of-turn token), on top of its question's row.
# Rows are left-padded in passes 1 and 2 (the last column holds each row's last token) and right-padded in pass 3;
# positions are passed explicitly, so that padding never shifts them. The ids and labels are `VisionCollator`'s.


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


class _Unsupported(Exception):
    """The processor does not tokenize the way the shared-prefix encoding reproduces."""


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = min(len(a), len(b))
    return next((t for t in range(n) if a[t] != b[t]), n)


def _image_token_of(processor: Any) -> tuple[str | None, int | None]:
    token = getattr(processor, "image_token", None)
    if not isinstance(token, str):
        return None, None
    return token, processor.tokenizer.convert_tokens_to_ids(token)


def _encode_questions(
    processor: Any, template: str, groups: Sequence[tuple[PromptItem, list[str]]]
) -> list[_Question | None]:
    """Every (item, option) pair templated and tokenized as `VisionCollator` does, with the image left as its one
    placeholder token; None for an item whose options share too short a prompt (it is scored by the reference path).
    """
    tokenizer = processor.tokenizer
    _, image_id = _image_token_of(processor)
    conversations, owners = [], []
    for g, (item, opts) in enumerate(groups):
        for opt in opts:
            conversations.append(_row(item, opt)["messages"])
            owners.append(g)
    enc = tokenizer.apply_chat_template(
        conversations, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    pairs: list[list[tuple[list[int], list[int]]]] = [[] for _ in groups]
    for ids, mask, g in zip(enc["input_ids"], enc["assistant_masks"], owners, strict=True):
        pairs[g].append((list(ids), [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]))
    out: list[_Question | None] = []
    for (item, _), rows in zip(groups, pairs, strict=True):
        first = rows[0][0]
        trained = [next((t for t, lab in enumerate(labels) if lab != IGNORE), len(labels)) for _, labels in rows]
        cut = min([*trained, *(_common_length(ids, first) for ids, _ in rows)])
        prompt = first[:cut]
        placeholders = sum(ids.count(image_id) for ids, _ in rows) if image_id is not None else 0
        if item.image is None:
            ok = placeholders == 0
            placeholder = None
        else:
            if image_id is None:
                raise _Unsupported("the processor names no image token")
            ok = placeholders == len(rows) and prompt.count(image_id) == 1
            placeholder = prompt.index(image_id) if ok else None
        # pass 2 needs one prompt id after the image at least
        ok = ok and cut >= 2 and (placeholder is None or placeholder < cut - 1)
        question = _Question(prompt, [ids[cut:] for ids, _ in rows], [lab[cut:] for _, lab in rows], placeholder)
        out.append(question if ok else None)
    return out


class _Images:
    """Pixel inputs and image-token expansions, from the processor's own image processing."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.token, self.token_id = _image_token_of(processor)
        tokenizer = processor.tokenizer
        self.special = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
        }
        self.expansions: dict[tuple[int, int], list[int]] = {}

    def expansion(self, image: Any) -> list[int]:
        """The ids that the placeholder of `image` expands to (by image size: the processors' rule).

        Only expansions made of special tokens are accepted: those tokenize the same in any context, so expanding
        the placeholder after tokenizing equals tokenizing the expanded text."""
        if image.size not in self.expansions:
            enc = self.processor(text=[self.token], images=[[image]], add_special_tokens=False)
            ids = list(enc["input_ids"][0])
            if not ids or not set(ids) <= self.special:
                raise _Unsupported("the image expands to non-special tokens")
            self.expansions[image.size] = ids
        return self.expansions[image.size]

    def inputs(self, images: list[Any]) -> dict[str, Any]:
        """The processor's image inputs (pixel values...) of a batch of images, one row each."""
        return dict(self.processor(images=[[im] for im in images], return_tensors="pt"))

    def expand(self, ids: list[int], at: int | None, image: Any) -> list[int]:
        return ids if at is None else ids[:at] + self.expansion(image) + ids[at + 1 :]


def _matches_reference(
    processor: Any, template: str, images: _Images, item: PromptItem, question: _Question, option: str
) -> bool:
    """Whether the encoding of one pair equals `VisionCollator`'s ids and labels for it."""
    prompt = images.expand(question.prompt, question.placeholder, load_image(item.image) if item.image else None)
    batch = VisionCollator(processor, chat_template=template)([_row(item, option)])
    ids = prompt + question.continuations[0]
    labels = [IGNORE] * len(prompt) + question.labels[0]
    return batch["input_ids"][0].tolist() == ids and batch["labels"][0].tolist() == labels


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
            if all(questions[q].placeholder is None or questions[q].placeholder < shared for q in part) and shared >= 1:
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


def _accepts(model: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _select_rows(cache: Any, rows: Any) -> Any:
    """A copy of a key/value cache holding only the given batch rows, in that order (repeats allowed)."""
    import copy

    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    device = next((layer.keys.device for layer in cache.layers if getattr(layer, "keys", None) is not None), None)
    out.batch_select_indices(rows.to(device) if device is not None else rows)
    return out


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
    images: _Images,
    pad_id: int,
    questions: Sequence[_Question],
    pictures: Sequence[Any],
    chunk: list[tuple[int, list[int]]],
    batch_size: int,
) -> dict[int, list[tuple[float, bool]]]:
    """The three passes over one chunk of (shared length, question indices) groups; scores by question index."""
    import torch
    from transformers import DynamicCache

    # 1. one row per group: its shared ids, image tokens expanded, with the pixel values
    heads = [(shared, part[0]) for shared, part in chunk]
    rows1 = [images.expand(questions[q].prompt[:shared], questions[q].placeholder, pictures[q]) for shared, q in heads]
    ids1, mask1 = _pad(rows1, pad_id, left=True)
    with_image = [pictures[q] for _, q in heads if pictures[q] is not None]
    extra = images.inputs(with_image) if with_image else {}
    cache = DynamicCache()
    extend(ids1, mask1, (mask1.cumsum(1) - 1).clamp_min(0), cache, last_only=True, **extra)

    # 2. one row per question: the rest of its prompt; the last column predicts its first option id
    order = [q for _, part in chunk for q in part]
    owner1 = torch.tensor([g for g, (_, part) in enumerate(chunk) for _ in part])
    ids2, mask2 = _pad([questions[q].prompt[shared:] for shared, part in chunk for q in part], pad_id, left=True)
    mask12 = torch.cat([mask1[owner1], mask2], dim=1)
    positions2 = mask1.sum(1)[owner1, None] + (mask2.cumsum(1) - 1).clamp_min(0)
    cache = _select_rows(cache, owner1)
    last = extend(ids2, mask12, positions2, cache, last_only=True)

    # 3. one row per option, at most batch_size rows a pass
    pairs = [
        (r, c, lab)
        for r, q in enumerate(order)
        for c, lab in zip(questions[q].continuations, questions[q].labels, strict=True)
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


def _shared_prefix_logprobs(
    model: Any,
    processor: Any,
    groups: Sequence[tuple[PromptItem, list[str]]],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[list[tuple[float, bool]]]:
    """(log-likelihood, is greedy) of each option of each (item, options) group, in the three cached passes above.

    Items the encoding cannot share (and every item, if the processor's tokenization is not one it reproduces
    exactly: checked on one pair against `VisionCollator`) are scored by the reference path."""
    import torch

    if not groups:
        return []
    total = sum(len(opts) for _, opts in groups)
    template = training_template(processor)
    images = _Images(processor)
    pictures = [load_image(item.image) if item.image is not None else None for item, _ in groups]
    questions: list[_Question | None]
    try:
        questions = _encode_questions(processor, template, groups)
        for g, question in enumerate(questions):
            if question is not None and pictures[g] is not None:
                images.expansion(pictures[g])  # every image size now: a non-special expansion fails here
        first = next((g for g, q in enumerate(questions) if q is not None), None)
        if first is not None:
            item, opts = groups[first]
            if not _matches_reference(processor, template, images, item, questions[first], opts[0]):  # type: ignore[arg-type]
                raise _Unsupported("the encoding differs from VisionCollator's")
    except _Unsupported:
        questions = [None] * len(groups)
    out: list[list[tuple[float, bool]]] = [[] for _ in groups]
    done = 0
    fallback = [g for g, q in enumerate(questions) if q is None]
    if fallback:
        flat = _reference_logprobs(
            model,
            processor,
            [groups[g][0] for g in fallback for _ in groups[g][1]],
            [opt for g in fallback for opt in groups[g][1]],
            batch_size=batch_size,
        )
        scored = iter(flat)
        for g in fallback:
            out[g] = [next(scored) for _ in groups[g][1]]
        done += len(flat)
        if progress:
            progress(done, total)
    live = [g for g, q in enumerate(questions) if q is not None]
    if not live:
        return out
    kept = [questions[g] for g in live]
    keys = [_image_key(pictures[g]) for g in live]
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    extend = _Extend(model)
    with torch.inference_mode(), _eval_mode(model):
        for chunk in _plan(kept, keys, batch_size):  # type: ignore[arg-type]
            scores = _score_chunk(extend, images, pad_id, kept, [pictures[g] for g in live], chunk, batch_size)  # type: ignore[arg-type]
            for q, s in scores.items():
                out[live[q]] = s
            done += sum(len(s) for s in scores.values())
            if progress:
                progress(done, total)
    return out


def answer_nll(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> np.ndarray:
    """Per-sample mean negative log-likelihood of the trained tokens (training masks, image-conditioned).

    NaN for a sample without any trained token.
    """
    collator = VisionCollator(processor)
    out = np.empty(len(samples), dtype=np.float64)
    for chunk in _chunks(len(samples), batch_size):
        batch = collator([sample_to_row(samples[i]) for i in chunk])
        sums, counts, _ = _label_logprobs(model, dict(batch))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[chunk.start : chunk.stop] = np.where(counts > 0, -sums / np.maximum(counts, 1), np.nan)
        if progress:
            progress(chunk.stop, len(samples))
    return out


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


def default_layers(n_layers: int, count: int = 5, depth: float = 5 / 6) -> list[int]:
    """`count` evenly spaced 0-indexed layers up to `depth` of the stack: [3, 7, 11, 15, 19] for 24 layers
    (COINCIDE's choice), [4, 10, 15, 20, 26] for 32, [0, 1] for 2; duplicates after clipping are dropped."""
    picks = {
        min(max(int(np.floor((k + 1) * n_layers * depth / count - 1 + 0.5)), 0), n_layers - 1) for k in range(count)
    }
    return sorted(picks)


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
) -> np.ndarray:
    """COINCIDE embeddings: per layer, the self-attention ``o_proj`` output averaged over image tokens and over
    text tokens separately, tanh, L2-normalised; concatenated layer-major [l0_img, l0_txt, l1_img, ...] and divided
    by sqrt(2·n_layers), so each row has unit norm. Shape (n, 2·len(layers)·hidden), float32.

    Image tokens are the positions holding the image token id (after the processor expands ``<image>``); text tokens
    are all other non-padding positions (system, user and assistant text of the chat template). For a sample
    without image tokens, ``text_only`` decides: "zero_image" leaves the image blocks at zero and scales the text
    blocks by 1/sqrt(n_layers) (unit norm); "text_twice" puts the text block in the image slot too.
    Layers after the deepest chosen one are not computed.
    """
    import torch

    if text_only not in ("zero_image", "text_twice"):
        raise ValueError(f"text_only must be 'zero_image' or 'text_twice', got {text_only!r}")
    layers = [int(layer) for layer in layers]
    blocks = decoder_layers(model)
    if not layers or min(layers) < 0 or max(layers) >= len(blocks):
        raise ValueError(f"layers {layers} out of range for a {len(blocks)}-layer language model")
    image_id = _image_token_id(model, processor)
    deepest = max(layers)
    captured: dict[int, Any] = {}

    def hook_for(layer: int) -> Callable[..., None]:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            captured[layer] = output
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].self_attn.o_proj.register_forward_hook(hook_for(layer)) for layer in sorted(set(layers))]
    collator = VisionCollator(processor)
    n_layers = len(layers)
    out: np.ndarray | None = None
    try:
        for chunk in _chunks(len(samples), batch_size):
            batch = dict(collator([sample_to_row(samples[i]) for i in chunk]))
            batch.pop("labels", None)
            mask = batch["attention_mask"].bool()
            is_image = (batch["input_ids"] == image_id) & mask
            is_text = mask & ~is_image
            captured.clear()
            with torch.inference_mode(), _eval_mode(model):
                try:
                    model(**_to_device(batch, model), use_cache=False)
                except _StopForward:
                    pass
            device = captured[deepest].device
            img_w, txt_w = is_image.to(device, torch.float32), is_text.to(device, torch.float32)
            has_image = is_image.any(dim=1).to(device)
            parts = []
            for layer in layers:  # pooled on the model's device: only (batch, hidden) vectors come back
                act = captured[layer].float()
                a_img = _unit(torch.tanh((act * img_w[..., None]).sum(1) / img_w.sum(1, keepdim=True).clamp_min(1)))
                a_txt = _unit(torch.tanh((act * txt_w[..., None]).sum(1) / txt_w.sum(1, keepdim=True).clamp_min(1)))
                if text_only == "text_twice":
                    a_img = torch.where(has_image[:, None], a_img, a_txt)
                else:
                    a_img = torch.where(has_image[:, None], a_img, torch.zeros_like(a_img))
                    a_txt = torch.where(has_image[:, None], a_txt, a_txt * np.sqrt(2.0))
                parts += [a_img, a_txt]
            emb = (torch.cat(parts, dim=1) / np.sqrt(2.0 * n_layers)).cpu().numpy().astype(np.float32)
            if out is None:
                out = np.zeros((len(samples), emb.shape[1]), dtype=np.float32)
            out[chunk.start : chunk.stop] = emb
            if progress:
                progress(chunk.stop, len(samples))
    finally:
        for h in handles:
            h.remove()
    if out is None:
        width = 2 * n_layers * int(model.config.get_text_config().hidden_size)
        out = np.zeros((0, width), dtype=np.float32)
    return out
