"""The perplexity and activations scorers: equal to a naive one-at-a-time loop, cached per sample, row-aligned."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixlab.data import Sample
from mixlab.models.layers import default_layers
from mixlab.models.loading import load_model
from mixlab.models.templates import training_template
from mixlab.plugins.scorers.activations import ActivationsScorer
from mixlab.plugins.scorers.perplexity import PerplexityScorer
from mixlab.testing import StubContext
from tests.tiny_vlm import NAMES, build_test_model, colour_samples


def FakeCtx(root: Path, base_model: Path) -> StubContext:
    """The run context scorers see: caches under root, the given base model."""
    return StubContext(root, base_model=base_model)


def _text_sample(i: int, turns: list[tuple[str, str]]) -> Sample:
    return Sample(
        id=f"text/{i}",
        source="text",
        category=None,
        image=None,
        conversations=[{"from": f, "value": v} for f, v in turns],
        noisy=None,
    )


def _mixed(root: Path) -> list[Sample]:
    """Image samples of one length, text-only samples of several lengths (one multi-turn), interleaved."""
    images = colour_samples(7, root / "img", seed=5)
    texts = [
        _text_sample(0, [("human", "Describe the picture."), ("gpt", "There is a small object")]),
        _text_sample(1, [("human", "How many objects are there? " * 3), ("gpt", "one")]),
        _text_sample(
            2,
            [("human", "What shape is in the image?"), ("gpt", "square"), ("human", "Are you sure?"), ("gpt", "Yes")],
        ),
    ]
    images[3]["conversations"] = [*images[3]["conversations"], {"from": "human", "value": "Are you sure?"}]
    images[3]["conversations"].append({"from": "gpt", "value": "Yes, it is red."})
    return [images[0], texts[0], images[1], images[2], texts[1], images[3], texts[2], *images[4:]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scorers")
    model_dir = build_test_model(root / "model", seed=3)
    model, processor = load_model(model_dir)
    return root, model_dir, model, processor, _mixed(root)


def _conversation(sample: Sample) -> list[dict]:
    """Typed chat messages with the PIL image inlined, written independently of mixlab's collator."""
    messages = []
    for turn in sample["conversations"]:
        role = "user" if turn["from"] == "human" else "assistant"
        content: list[dict] = []
        text = turn["value"]
        if "<image>" in text:  # the LLaVA convention: "<image>\n" before the question
            content.append({"type": "image", "image": Image.open(sample["image"]).convert("RGB")})
            text = text.replace("<image>", "").strip()
        content.append({"type": "text", "text": text})
        messages.append({"role": role, "content": content})
    return messages


def _encode(processor, sample: Sample):
    return processor.apply_chat_template(
        _conversation(sample),
        chat_template=training_template(processor),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        processor_kwargs={"add_special_tokens": False},
    )


def naive_nll(model, processor, sample: Sample) -> float:
    """One sample, no padding: cross-entropy of the assistant tokens (the template's generation spans)."""
    enc = dict(_encode(processor, sample))
    mask = torch.as_tensor(enc.pop("assistant_masks")).bool()
    labels = torch.where(mask, enc["input_ids"], torch.full_like(enc["input_ids"], -100))
    with torch.no_grad():
        logits = model(**enc).logits
    return float(torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100))


def naive_embedding(model, processor, sample: Sample, layers: list[int]) -> np.ndarray:
    """Hooks on o_proj over a full forward of one sample; pooling done here in numpy."""
    enc = dict(_encode(processor, sample))
    enc.pop("assistant_masks")
    outputs = {}
    blocks = model.model.language_model.layers
    handles = [
        blocks[i].self_attn.o_proj.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o[0].numpy()))
        for i in layers
    ]
    with torch.no_grad():
        model(**enc)
    for h in handles:
        h.remove()
    is_image = (enc["input_ids"][0] == model.config.image_token_id).numpy()
    parts = []
    for i in layers:
        for span in (is_image, ~is_image):
            v = np.tanh(outputs[i][span].mean(0))
            parts.append(v / np.linalg.norm(v))
    return np.concatenate(parts) / math.sqrt(2 * len(layers))


def _scorer(cls, **options):
    return cls(cls.Options(**options), "test")


# ---- perplexity --------------------------------------------------------------------------------------------


def test_perplexity_equals_naive_loop(setup, tmp_path):
    root, model_dir, model, processor, samples = setup
    ctx = FakeCtx(tmp_path, model_dir)
    out = _scorer(PerplexityScorer, batch_size=4).score(samples, ctx)
    naive = np.array([naive_nll(model, processor, s) for s in samples])
    assert out["nll"].shape == out["ppl"].shape == (len(samples),)
    np.testing.assert_allclose(out["nll"], naive, atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["ppl"], np.exp(naive), rtol=1e-4)
    assert sum(ctx.advanced) == len(samples)


def test_perplexity_row_alignment_and_cache(setup, tmp_path, monkeypatch):
    root, model_dir, model, processor, samples = setup
    ctx = FakeCtx(tmp_path, model_dir)
    scorer = _scorer(PerplexityScorer, batch_size=3)
    first = scorer.score(samples[:6], ctx)["nll"]

    from transformers import LlavaForConditionalGeneration

    import mixlab.models.sample_scores as sample_scores

    scored, forwards = [], []
    real_nll, real_forward = sample_scores.answer_nll_batches, LlavaForConditionalGeneration.forward

    def counted(m, p, pending, batches, **k):
        scored.extend(pending[i] for batch in batches for i in batch)
        return real_nll(m, p, pending, batches, **k)

    monkeypatch.setattr(sample_scores, "answer_nll_batches", counted)
    monkeypatch.setattr(
        LlavaForConditionalGeneration,
        "forward",
        lambda self, *a, **k: forwards.append(1) or real_forward(self, *a, **k),
    )
    reversed_ = scorer.score(samples[::-1], ctx)["nll"]  # overlaps the first call: only the rest is scored
    np.testing.assert_allclose(reversed_[::-1][:6], first, atol=1e-12)
    assert sorted(s["id"] for s in scored) == sorted(s["id"] for s in samples[6:])
    assert len(forwards) == math.ceil(len(samples[6:]) / 3)

    forwards.clear()
    for cache_file in (tmp_path / "cache" / "perplexity").rglob("nll.jsonl"):
        with open(cache_file, "a") as f:
            f.write('{"key": "cut by a cr')  # a crash mid-line is ignored on the next read
    again = scorer.score(samples, ctx)["nll"]  # everything cached: no forward pass at all
    assert forwards == []
    np.testing.assert_allclose(again, reversed_[::-1], atol=1e-12)
    assert (tmp_path / "cache" / "perplexity").exists()


def test_batches_are_length_neighbours_longest_first(setup):
    _, _, _, processor, samples = setup
    batches = _scorer(PerplexityScorer, batch_size=3).batches(processor, samples)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    assert [len(b) for b in batches] == [1, 3, 3, 3]  # chunks of 3 in length order, reversed: the remainder first

    def length(i: int) -> int:
        return len(_encode(processor, samples[i])["input_ids"][0])

    spans = [(min(map(length, b)), max(map(length, b))) for b in batches]
    assert all(low >= high for (low, _), (_, high) in zip(spans, spans[1:], strict=False))
    assert spans[0][1] > spans[-1][0]


def test_perplexity_nan_without_trained_tokens_and_duplicates(setup, tmp_path):
    root, model_dir, _, _, samples = setup
    no_answer = _text_sample(9, [("human", "Describe the picture.")])
    ctx = FakeCtx(tmp_path, model_dir)
    out = _scorer(PerplexityScorer).score([samples[0], no_answer, samples[0]], ctx)
    assert np.isfinite(out["ppl"][0]) and np.isnan(out["ppl"][1]) and np.isnan(out["nll"][1])
    assert out["nll"][2] == out["nll"][0] and sum(ctx.advanced) == 3
    lines = (next((tmp_path / "cache" / "perplexity").iterdir()) / "nll.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the repeated sample is scored once


def test_perplexity_is_lower_for_correct_labels_after_training(setup, tmp_path):
    """A few optimiser steps on correctly labelled images: the true colour beats a wrong one for the same image."""
    from mixlab.data import sample_to_row
    from mixlab.models.collator import VisionCollator

    _, base_dir, _, _, _ = setup
    model, processor = load_model(base_dir, for_training=True)
    train = colour_samples(12, tmp_path / "train", seed=11, prefix="t")
    batch = VisionCollator(processor)([sample_to_row(s) for s in train])
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        optimiser.zero_grad()
        model(**batch).loss.backward()
        optimiser.step()
    model.save_pretrained(tmp_path / "trained")
    processor.save_pretrained(tmp_path / "trained")

    wrong = []
    for s in train:
        answer = s["conversations"][1]["value"]
        other = NAMES[(NAMES.index(answer) + 1) % len(NAMES)]
        wrong.append(
            {**s, "id": s["id"] + "-wrong", "conversations": [s["conversations"][0], {"from": "gpt", "value": other}]}
        )
    scorer = _scorer(PerplexityScorer, model="trained")
    scorer.base_dir = tmp_path
    ppl = scorer.score(train + wrong, FakeCtx(tmp_path / "cache", base_dir))["ppl"]
    right_ppl, wrong_ppl = ppl[: len(train)], ppl[len(train) :]
    assert (right_ppl < wrong_ppl).mean() >= 0.9, (right_ppl, wrong_ppl)


# ---- activations -------------------------------------------------------------------------------------------


def test_default_layers():
    assert default_layers(24) == [3, 7, 11, 15, 19]
    assert default_layers(2) == [0, 1]
    assert default_layers(1) == [0]
    assert default_layers(32) == [4, 10, 15, 20, 26]


def test_activations_shape_norm_and_direct_computation(setup, tmp_path):
    root, model_dir, model, processor, samples = setup
    ctx = FakeCtx(tmp_path, model_dir)
    emb = _scorer(ActivationsScorer, batch_size=4).score(samples, ctx)["embedding"]
    hidden = model.config.text_config.hidden_size
    assert emb.dtype == np.float32 and emb.shape == (len(samples), 2 * 2 * hidden)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for i in (0, 5):  # single-turn and multi-turn image samples
        np.testing.assert_allclose(emb[i], naive_embedding(model, processor, samples[i], [0, 1]), atol=1e-5)

    # text-only rule "zero_image": image blocks zero, text blocks = the text feature / sqrt(n_layers)
    blocks = emb[1].reshape(4, hidden)
    assert np.all(blocks[0] == 0) and np.all(blocks[2] == 0)
    np.testing.assert_allclose(np.linalg.norm(blocks[1]), 1 / math.sqrt(2), atol=1e-5)

    # deterministic, batch-size independent and row-aligned with the input order
    again = _scorer(ActivationsScorer, batch_size=1).score(samples[::-1], FakeCtx(tmp_path / "b", model_dir))
    np.testing.assert_allclose(again["embedding"][::-1], emb, atol=1e-5)


def test_activations_text_twice_and_layer_choice(setup, tmp_path):
    root, model_dir, model, processor, samples = setup
    ctx = FakeCtx(tmp_path, model_dir)
    text = [samples[1], samples[6]]
    twice = _scorer(ActivationsScorer, text_only="text_twice", layers=[1]).score(text, ctx)["embedding"]
    zero = _scorer(ActivationsScorer, layers=[1]).score(text, ctx)["embedding"]
    hidden = model.config.text_config.hidden_size
    assert twice.shape == (2, 2 * hidden)
    np.testing.assert_allclose(twice[:, :hidden], twice[:, hidden:], atol=0)
    np.testing.assert_allclose(zero[:, hidden:], twice[:, hidden:] * math.sqrt(2), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(twice, axis=1), 1.0, atol=1e-5)

    with pytest.raises(Exception, match="layers"):
        _scorer(ActivationsScorer, layers=[2]).score(text, ctx)


def test_activations_cache_hit_skips_the_model(setup, tmp_path, monkeypatch):
    root, model_dir, model, processor, samples = setup
    ctx = FakeCtx(tmp_path, model_dir)
    scorer = _scorer(ActivationsScorer, batch_size=4)
    first = scorer.score(samples, ctx)["embedding"]

    import mixlab.models.sample_scores as sample_scores

    calls = []
    real = sample_scores.pooled_activations_batches
    monkeypatch.setattr(
        sample_scores, "pooled_activations_batches", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k)
    )
    subset = [samples[4], samples[0]]
    again = scorer.score(subset, ctx)["embedding"]
    assert calls == []
    np.testing.assert_array_equal(again, first[[4, 0]])

    folder = next((tmp_path / "cache" / "activations").iterdir())
    (folder / "part-999999-1.npz").write_bytes(b"cut by a crash")  # an unreadable part is skipped
    extra = colour_samples(2, tmp_path / "extra", seed=8, prefix="x")
    more = scorer.score([*extra, samples[1]], ctx)["embedding"]
    assert calls == [2]  # only the new samples reach the model
    np.testing.assert_array_equal(more[2], first[1])
