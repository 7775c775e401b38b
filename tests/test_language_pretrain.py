"""The tiny preset's language pretraining: reading questions that state what they ask, and a training that moves
only the language model and teaches it to read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixlab.models.base import prepare_base_model
from mixlab.models.language_pretrain import CATEGORIES, LanguagePretraining, pretrain_language, reading_questions
from mixlab.models.loading import load_model
from mixlab.sections import ModelSection
from mixlab.toyworld import scenes
from mixlab.toyworld.rng import stream
from tests.tiny_vlm import build_test_model, text_samples


@pytest.mark.parametrize("category", [c for c in scenes.MAKERS if c not in ("caption", "text")])
def test_each_statement_says_the_answer(category):
    """The sentence that replaces the picture holds the answer (a science fact sits in the hint)."""
    rng = stream(0, f"test/{category}")
    for _ in range(50):
        item = scenes.MAKERS[category](rng, 32)
        assert item.answer in f"{item.hint or ''} {item.statement}", (category, item)
        assert item.statement or item.hint


def test_reading_questions_are_text_in_every_format():
    samples = reading_questions(0, 40, 32)
    assert [s["category"] for s in samples] == [c for c in CATEGORIES for _ in range(40)]
    assert all(s["image"] is None and "<image>" not in s["conversations"][0]["value"] for s in samples)
    prompts = [s["conversations"][0]["value"] for s in samples]
    assert sum("Please answer yes or no." in p for p in prompts) > 60
    assert sum("\nA. " in p for p in prompts) > 60
    with_context = [p for s, p in zip(samples, prompts, strict=True) if s["category"] != "text"]
    assert all(p.startswith("Context: ") for p in with_context)
    assert reading_questions(0, 40, 32) == samples  # deterministic
    assert reading_questions(1, 40, 32) != samples


def test_pretraining_moves_only_the_language_model_and_teaches_reading(tmp_path):
    model, processor = load_model(build_test_model(tmp_path / "m"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = LanguagePretraining(steps=300, batch_size=16, learning_rate=3e-3, pool=60)
    short = LanguagePretraining(steps=2, batch_size=16, learning_rate=3e-3, pool=60)
    steps: list[tuple[int, int]] = []
    untrained, _ = load_model(tmp_path / "m")
    baseline = pretrain_language(untrained, processor, 0, short)
    accuracy = pretrain_language(model, processor, 0, settings, lambda s, t: steps.append((s, t)))
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all("vision_tower" not in k and "projector" not in k for k in moved)
    assert any("embed_tokens" in k for k in moved) and any("lm_head" in k for k in moved)
    assert steps[-1] == (300, 300)
    assert set(accuracy) == set(CATEGORIES) and all(0.0 <= v <= 1.0 for v in accuracy.values())
    print("held-out exact answers", baseline, "->", accuracy)
    assert np.mean(list(accuracy.values())) > np.mean(list(baseline.values())) + 0.2


def test_the_tiny_preset_records_its_language_pretraining(tmp_path):
    tiny = {"vision_pretrain_steps": 0, "language_pretrain_steps": 3, "text_hidden": 32, "vision_hidden": 32}
    model = ModelSection(preset="tiny", tiny=tiny)
    records: dict = {}
    progress: list[tuple[int, int]] = []
    track = lambda done, total: progress.append((done, total))  # noqa: E731
    prepare_base_model(model, text_samples(20), tmp_path, 0, tmp_path, records.update, track)
    assert set(records["language_pretrain_accuracy"]) == set(CATEGORIES)
    assert progress[-1] == (3, 3)
