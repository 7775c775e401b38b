"""Inference for evaluators: greedy answers and option likelihoods.

Prompts are rendered with `training_template(processor)`, the template the model is trained with, so that evaluation
sees exactly the format of training. Option likelihoods run each image and prompt once and score the options from
there (`mixlab.models.options`; `choose(..., shared_prefix=False)` is the per-option reference path).
docs/benchmarks.md has the measured speed-ups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixlab.models.collator import load_image
from mixlab.models.encoding import PromptItem, prompt_row
from mixlab.models.forward import Progress, chunks, eval_mode, to_device
from mixlab.models.options import item_key, reference_logprobs, shared_prefix_logprobs
from mixlab.models.templates import training_template

__all__ = ["PromptItem", "choose", "continuation_logprobs", "generate"]


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
    for chunk in chunks(len(items), batch_size):
        rows = [prompt_row(items[i]) for i in chunk]
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
        inputs = to_device(dict(inputs), model)
        with torch.inference_mode(), eval_mode(model):
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
        return reference_logprobs(model, processor, items, continuations, batch_size=batch_size, progress=progress)
    members: dict[tuple[Any, ...], list[int]] = {}
    for i, item in enumerate(items):
        members.setdefault(item_key(item), []).append(i)
    groups = [(items[idx[0]], [continuations[i] for i in idx]) for idx in members.values()]
    scored = shared_prefix_logprobs(model, processor, groups, batch_size=batch_size, progress=progress)
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
        scored = shared_prefix_logprobs(
            model, processor, [(items[i], list(options[i])) for i in kept], batch_size=batch_size, progress=progress
        )
        per_item: dict[int, list[float]] = {i: [lp for lp, _ in s] for i, s in zip(kept, scored, strict=True)}
        return [int(np.argmax(per_item[i])) if i in per_item else -1 for i in range(len(items))]
    pairs = [(items[i], opt) for i, opts in enumerate(options) for opt in opts]
    flat = reference_logprobs(
        model, processor, [p[0] for p in pairs], [p[1] for p in pairs], batch_size=batch_size, progress=progress
    )
    scores = np.array([logprob for logprob, _ in flat], dtype=np.float64)
    picks, k = [], 0
    for opts in options:
        picks.append(int(np.argmax(scores[k : k + len(opts)])) if opts else -1)
        k += len(opts)
    return picks
