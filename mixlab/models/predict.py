"""Batched inference for evaluators and scorers: greedy answers, option likelihoods, per-sample answer NLL.

All three render prompts with `training_template(processor)`, the template the model is trained with, so that
evaluation sees exactly the format of training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mixlab.data import IMAGE_TOKEN, Sample
from mixlab.models.templates import training_template
from mixlab.training.collator import IGNORE, VisionCollator, load_image, sample_to_row

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
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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


def _label_logprobs(model: Any, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (sum of log-probs, count) over the trained (label != -100) tokens of a collated batch."""
    import torch

    labels = batch.pop("labels")
    batch = _to_device(batch, model)
    with torch.inference_mode(), _eval_mode(model):
        logits = model(**batch, use_cache=False).logits
    labels = labels.to(logits.device)
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    sums, counts = [], []
    for row_logits, row_labels in zip(shift_logits, shift_labels, strict=True):
        keep = row_labels != IGNORE
        logp = torch.log_softmax(row_logits[keep].float(), dim=-1)
        token_logp = logp.gather(-1, row_labels[keep].unsqueeze(-1)).squeeze(-1)
        sums.append(float(token_logp.sum()))
        counts.append(int(keep.sum()))
    return np.array(sums, dtype=np.float64), np.array(counts, dtype=np.int64)


def choose(
    model: Any,
    processor: Any,
    items: Sequence[PromptItem],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[int]:
    """For each item, the index of the option with the highest total log-likelihood as the assistant's answer.

    The scored tokens are the trained ones (the option text and the end-of-turn token), as in training.
    Ties go to the lowest index; an item without options gets -1. `progress(done, total)` counts (item, option) pairs.
    """
    if len(items) != len(options):
        raise ValueError(f"{len(items)} items but {len(options)} option lists")
    pairs = [(i, opt) for i, opts in enumerate(options) for opt in opts]
    collator = VisionCollator(processor)
    scores = np.empty(len(pairs), dtype=np.float64)
    for chunk in _chunks(len(pairs), batch_size):
        batch = collator([_row(items[pairs[k][0]], pairs[k][1]) for k in chunk])
        sums, _ = _label_logprobs(model, dict(batch))
        scores[chunk.start : chunk.stop] = sums
        if progress:
            progress(chunk.stop, len(pairs))
    picks, k = [], 0
    for opts in options:
        picks.append(int(np.argmax(scores[k : k + len(opts)])) if opts else -1)
        k += len(opts)
    return picks


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
        sums, counts = _label_logprobs(model, dict(batch))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[chunk.start : chunk.stop] = np.where(counts > 0, -sums / np.maximum(counts, 1), np.nan)
        if progress:
            progress(chunk.stop, len(samples))
    return out
