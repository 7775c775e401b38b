"""Batched inference for evaluators and scorers: greedy answers, option likelihoods, per-sample answer NLL.

All three render prompts with `training_template(processor)`, the template the model is trained with, so that
evaluation sees exactly the format of training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

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


def continuation_logprobs(
    model: Any,
    processor: Any,
    items: Sequence[PromptItem],
    continuations: Sequence[str],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) of each continuation as the assistant's answer to its item.

    The scored tokens are the trained ones (the continuation and the end-of-turn token), as in `choose`.
    """
    if len(items) != len(continuations):
        raise ValueError(f"{len(items)} items but {len(continuations)} continuations")
    collator = VisionCollator(processor)
    out: list[tuple[float, bool]] = []
    for chunk in _chunks(len(items), batch_size):
        batch = collator([_row(items[i], continuations[i]) for i in chunk])
        sums, _, greedy = _label_logprobs(model, dict(batch))
        out.extend(zip(sums.tolist(), greedy.tolist(), strict=True))
        if progress:
            progress(chunk.stop, len(items))
    return out


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
    pairs = [(items[i], opt) for i, opts in enumerate(options) for opt in opts]
    scored = continuation_logprobs(
        model, processor, [p[0] for p in pairs], [p[1] for p in pairs], batch_size=batch_size, progress=progress
    )
    scores = np.array([logprob for logprob, _ in scored], dtype=np.float64)
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
