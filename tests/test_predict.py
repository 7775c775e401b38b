"""Batched inference equals one-at-a-time inference: greedy answers, option choices and option log-likelihoods."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mixlab.models.collator import VisionCollator
from mixlab.models.predict import PromptItem, choose, generate
from tests.tiny_vlm import NAMES, QUESTION, build_test_model, colour_samples, text_samples


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mixlab.models.loading import load_model

    root = tmp_path_factory.mktemp("predict")
    model, processor = load_model(build_test_model(root / "model", seed=3))
    samples = colour_samples(9, root / "img", seed=5)
    # text-only samples of different lengths, mixed with the image ones
    samples += text_samples(4)
    return model, processor, samples


def _items(samples):
    items = []
    for s in samples:
        image = Image.open(s["image"]).convert("RGB") if s["image"] else None
        items.append(PromptItem(s["conversations"][0]["value"], image))
    return items


def test_choose_batched_equals_single(setup):
    model, processor, samples = setup
    items = _items(samples)
    options = [NAMES if s["image"] else ["yes", "no", "There is a small object"] for s in samples]
    batched = choose(model, processor, items, options, batch_size=7)
    single = [choose(model, processor, [it], [opts], batch_size=1)[0] for it, opts in zip(items, options, strict=True)]
    assert batched == single
    assert all(0 <= k < len(o) for k, o in zip(batched, options, strict=True))


def test_generate_batched_equals_single(setup):
    model, processor, samples = setup
    items = _items(samples)
    calls = []
    batched = generate(model, processor, items, max_new_tokens=5, batch_size=4, progress=lambda d, t: calls.append(d))
    single = [generate(model, processor, [it], max_new_tokens=5)[0] for it in items]
    assert batched == single
    assert calls == [4, 8, 12, 13]
    assert all(isinstance(a, str) and a == a.strip() and "<|end|>" not in a for a in batched)


def test_prompt_item_image_marker_is_dropped(setup):
    model, processor, _ = setup
    img = Image.new("RGB", (64, 64), (200, 0, 0))
    from mixlab.models.predict import continuation_logprobs

    marked, plain = PromptItem(f"<image>\n{QUESTION}", img), PromptItem(QUESTION, img)
    assert choose(model, processor, [marked], [NAMES]) == choose(model, processor, [plain], [NAMES])
    a = continuation_logprobs(model, processor, [marked] * len(NAMES), NAMES)
    b = continuation_logprobs(model, processor, [plain] * len(NAMES), NAMES)
    np.testing.assert_allclose([lp for lp, _ in a], [lp for lp, _ in b], rtol=1e-6)  # one image, not two


def test_continuation_logprobs_against_the_models_own_logits(setup):
    """Sum of log-probs and the greedy flag, checked against a direct forward pass over the training-masked batch."""
    import torch

    from mixlab.models.predict import continuation_logprobs

    model, processor, samples = setup
    items = _items(samples[:3])
    continuations = ["red", "blue green", "There is"]
    got = continuation_logprobs(model, processor, items, continuations, batch_size=2)
    for item, continuation, (logprob, greedy) in zip(items, continuations, got, strict=True):
        row = {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": continuation}]},
            ],
            "images": [item.image],
        }
        batch = VisionCollator(processor)([row])
        labels = batch.pop("labels")[0, 1:]
        with torch.no_grad():
            logp = torch.log_softmax(model(**batch).logits[0, :-1].float(), dim=-1)
        keep = labels != -100
        expected = logp[keep].gather(-1, labels[keep, None]).sum()
        assert logprob == pytest.approx(float(expected), abs=1e-4)
        assert greedy == bool((logp[keep].argmax(-1) == labels[keep]).all())
    per_option = continuation_logprobs(model, processor, items[:1] * len(NAMES), NAMES)
    assert choose(model, processor, items[:1], [NAMES]) == [int(np.argmax([lp for lp, _ in per_option]))]
