"""Shared-prefix option scoring equals the per-option reference path (log-likelihoods, greedy flags and picks)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import mixlab.models.encoding as encoding
import mixlab.models.options as option_scoring
from mixlab.models.predict import PromptItem, choose, continuation_logprobs
from mixlab.models.templates import LLAVA15_TRAINING_TEMPLATE
from tests.tiny_vlm import NAMES, QUESTION, build_test_model, colour_samples, text_samples

LETTERS = ["A", "B", "C", "D"]
YES_NO = ["Yes", "No"]
TEXTS = ["red", "blue green", "There is a small object", "one two three four five", ""]


def _mcq(question: str, options: list[str]) -> str:
    lines = [f"{letter}. {text}" for letter, text in zip(LETTERS, options, strict=False)]
    return "\n".join([question, *lines, "Answer with the option's letter from the given choices directly."])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mixlab.models.loading import load_model

    root = tmp_path_factory.mktemp("options")
    model_dir = build_test_model(root / "model", seed=3)
    model, processor = load_model(model_dir)
    images = [Image.open(s["image"]).convert("RGB") for s in colour_samples(5, root / "img", seed=5)]
    items, options = [], []
    for i, image in enumerate(images):  # several questions on one image, prompts of different lengths
        items.append(PromptItem(f"<image>\n{_mcq(QUESTION, NAMES[i : i + 4])}", image))
        options.append(LETTERS)
        items.append(PromptItem(f"Is the square {NAMES[i]}? Please answer yes or no.", image))
        options.append(YES_NO)
        if i % 2:
            items.append(PromptItem(QUESTION + " Answer the question using a single word or phrase.", image))
            options.append(TEXTS[: 2 + i])
    for i in range(4):  # text-only questions of several lengths, interleaved with the image ones
        at = 3 * i + 1
        items.insert(at, PromptItem("Describe the picture." + " Please." * i))
        options.insert(at, [TEXTS[i], TEXTS[i + 1]] if i % 2 else YES_NO)
    items.append(PromptItem("How many objects are there?", images[0]))  # a lone question on its image
    options.append(["one", "two", "three"])
    return model, processor, items, options, model_dir


def _reference(model, processor, items, options, batch_size=8):
    pairs = [(item, opt) for item, opts in zip(items, options, strict=True) for opt in opts]
    return continuation_logprobs(
        model, processor, [p[0] for p in pairs], [p[1] for p in pairs], batch_size=batch_size, shared_prefix=False
    )


def _shared(model, processor, items, options, batch_size):
    pairs = [(item, opt) for item, opts in zip(items, options, strict=True) for opt in opts]
    return continuation_logprobs(model, processor, [p[0] for p in pairs], [p[1] for p in pairs], batch_size=batch_size)


def _assert_same(got, expected):
    assert len(got) == len(expected)
    np.testing.assert_allclose([lp for lp, _ in got], [lp for lp, _ in expected], rtol=1e-5, atol=0)
    assert [g for _, g in got] == [g for _, g in expected]


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_shared_prefix_equals_reference(setup, batch_size):
    model, processor, items, options, _ = setup
    reference = _reference(model, processor, items, options)
    _assert_same(_shared(model, processor, items, options, batch_size), reference)
    picks = choose(model, processor, items, options, batch_size=batch_size)
    assert picks == choose(model, processor, items, options, batch_size=8, shared_prefix=False)


def test_the_shared_path_really_shares(setup, monkeypatch):
    """The fast path runs (no fallback to the reference), one image pass per distinct image in a chunk."""
    model, processor, items, options, _ = setup
    choose(model, processor, items[:1], options[:1])  # the once-per-model check against the reference path
    monkeypatch.setattr(option_scoring, "reference_logprobs", lambda *a, **k: pytest.fail("fell back to the reference"))
    rows = []
    real = option_scoring.image_inputs
    monkeypatch.setattr(
        option_scoring, "image_inputs", lambda p, pics: rows.append(sum(map(bool, pics))) or real(p, pics)
    )
    choose(model, processor, items, options, batch_size=64)
    assert rows == [5]


def test_padding_side_and_template(setup):
    """The tokenizer's padding side does not matter (padding is explicit); nor does the template (LLaVA-1.5: the
    answer follows "ASSISTANT: " and its first token takes the space)."""
    from transformers import AutoProcessor

    model, _, items, options, model_dir = setup
    left = AutoProcessor.from_pretrained(model_dir)
    left.tokenizer.padding_side = "left"
    other = AutoProcessor.from_pretrained(model_dir)
    other.chat_template = LLAVA15_TRAINING_TEMPLATE
    other.tokenizer.chat_template = LLAVA15_TRAINING_TEMPLATE
    expected = {id(p): _reference(model, p, items, options) for p in (left, other)}
    with pytest.MonkeyPatch.context() as patch:  # the shared path itself, not a fallback to the reference
        patch.setattr(option_scoring, "_reference_groups", lambda *a, **k: pytest.fail("fell back to the reference"))
        _assert_same(_shared(model, left, items, options, 7), expected[id(left)])
        _assert_same(_shared(model, other, items, options, 5), expected[id(other)])


def test_equal_items_are_grouped_by_content(setup, monkeypatch):
    """lmms-eval style: one request per (document, option), each with its own copy of the image, in any order."""
    model, processor, items, options, _ = setup
    pairs = [(item, opt) for item, opts in zip(items, options, strict=True) for opt in opts]
    order = np.random.default_rng(0).permutation(len(pairs))
    copies = [
        PromptItem(pairs[i][0].text, pairs[i][0].image.copy() if pairs[i][0].image is not None else None) for i in order
    ]
    continuations = [pairs[i][1] for i in order]
    calls, encoded = [], []
    real = option_scoring.image_inputs
    monkeypatch.setattr(
        option_scoring, "image_inputs", lambda p, pics: encoded.append(sum(map(bool, pics))) or real(p, pics)
    )
    got = continuation_logprobs(
        model, processor, copies, continuations, batch_size=4, progress=lambda d, t: calls.append((d, t))
    )
    reference = _reference(model, processor, items, options)
    _assert_same(got, [reference[i] for i in order])
    assert sum(encoded) == 5  # each of the five images encoded once, not once per copy
    assert calls[-1] == (len(pairs), len(pairs)) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_fallback_to_reference(setup, monkeypatch):
    """A processor whose tokenization the encoding does not reproduce is scored by the reference path."""
    model, processor, items, options, _ = setup
    monkeypatch.setattr(option_scoring, "fast_encoding_ok", lambda *a, **k: False)
    calls = []
    real = option_scoring.reference_logprobs
    monkeypatch.setattr(option_scoring, "reference_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    _assert_same(_shared(model, processor, items, options, 8), _reference(model, processor, items, options))
    assert calls


def test_edge_cases(setup):
    model, processor, items, _, _ = setup
    assert choose(model, processor, [], []) == []
    assert continuation_logprobs(model, processor, [], []) == []
    assert choose(model, processor, items[:2], [[], ["Yes"]]) == [-1, 0]
    _assert_same(
        continuation_logprobs(model, processor, items[:1], ["A"]),
        continuation_logprobs(model, processor, items[:1], ["A"], shared_prefix=False),
    )
    with pytest.raises(ValueError):
        choose(model, processor, items[:2], [["A"]])


def test_plan_groups_questions_by_image():
    q = option_scoring._Question
    questions = [
        q([1, 2, 9, 5, 6], [[7]], [[7]], 2),
        q([1, 2, 9, 5, 8, 8], [[7]], [[7]], 2),
        q([1, 3, 4], [[7]], [[7]], None),
        q([1, 2, 9, 5, 6, 6], [[7]], [[7]], 2),
    ]
    chunks = option_scoring._plan(questions, ["img", "img", None, "other"], batch_size=2)
    assert chunks == [[(4, [0, 1])], [(2, [2]), (5, [3])]]


# ---- the collator-free encoding used by the shared path and by answer_nll / pooled_activations -------------------


def _samples(root):

    samples = colour_samples(4, root / "enc", seed=7)
    samples[1]["conversations"] += [{"from": "human", "value": "Are you sure?"}, {"from": "gpt", "value": "Yes"}]
    samples += text_samples(3)
    return [samples[4], samples[0], samples[5], samples[1], samples[2], samples[6], samples[3]]


def test_collate_equals_vision_collator(setup, tmp_path):
    import torch

    from mixlab.data import sample_to_row
    from mixlab.models.collator import VisionCollator

    _, processor, _, _, _ = setup
    rows = [sample_to_row(s) for s in _samples(tmp_path)]
    for batch in (rows, rows[:1], rows[1:2], rows[2:5]):
        fast = encoding.Collate(processor)(batch)
        reference = dict(VisionCollator(processor)(batch))
        assert set(fast) == set(reference)
        for key, value in reference.items():
            assert torch.equal(torch.as_tensor(fast[key]), torch.as_tensor(value)), key
    assert encoding._VERDICTS[processor]  # checked once per row kind, then remembered


def test_collate_falls_back_where_its_encoding_fails(setup, tmp_path, monkeypatch):
    """A processor that the fast encoding cannot drive (any error in it) gets the collator's own batches."""
    import torch
    from transformers import AutoProcessor

    from mixlab.data import sample_to_row
    from mixlab.models.collator import VisionCollator

    *_, model_dir = setup
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = [sample_to_row(s) for s in _samples(tmp_path)][:3]

    def unlike_llava(*args, **kwargs):
        raise TypeError("this processor's tokenizer takes other arguments")

    monkeypatch.setattr(encoding, "tokenize_chats", unlike_llava)
    fast = encoding.Collate(processor)(rows)
    reference = dict(VisionCollator(processor)(rows))
    assert all(torch.equal(torch.as_tensor(fast[k]), torch.as_tensor(v)) for k, v in reference.items())
    assert set(encoding._VERDICTS[processor].values()) == {False}


def test_collate_checks_a_row_by_the_images_it_has(setup, tmp_path):
    """A row whose image entry is missing (None) is a text-only row: it is checked as one, and the check of rows with
    an image is still made on a row that has one."""
    from transformers import AutoProcessor

    from mixlab.data import sample_to_row

    *_, model_dir = setup
    processor = AutoProcessor.from_pretrained(model_dir)
    rows = [sample_to_row(s) for s in _samples(tmp_path)]
    with_image = next(row for row in rows if row["images"])
    missing = {**next(row for row in rows if not row["images"]), "images": [None]}
    encoding.Collate(processor)([missing])
    assert [count for _, count in encoding._VERDICTS[processor]] == [0]
    encoding.Collate(processor)([with_image])
    assert sorted(count for _, count in encoding._VERDICTS[processor]) == [0, 1]


def test_scorers_duplicates_and_progress(setup, tmp_path):
    from mixlab.models.sample_scores import answer_nll, pooled_activations

    model, processor, _, _, _ = setup
    samples = _samples(tmp_path)
    twice = [*samples, *samples[::2]]
    calls = []
    got = answer_nll(model, processor, twice, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    single = np.array([answer_nll(model, processor, [s], batch_size=1)[0] for s in samples])
    np.testing.assert_allclose(got[: len(samples)], single, rtol=1e-5)
    np.testing.assert_array_equal(got[len(samples) :], got[: len(samples) : 2])
    assert calls[-1] == (len(twice), len(twice)) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    emb = pooled_activations(model, processor, twice, [0, 1], batch_size=3)
    alone = pooled_activations(model, processor, samples, [0, 1], batch_size=1)
    np.testing.assert_allclose(emb[: len(samples)], alone, atol=1e-6)
    np.testing.assert_array_equal(emb[len(samples) :], emb[: len(samples) : 2])


def test_per_processor_state_does_not_keep_processors_alive(setup):
    import gc

    from transformers import AutoProcessor

    _, _, items, options, model_dir = setup
    processor = AutoProcessor.from_pretrained(model_dir)
    encoding.Collate(processor)([encoding.prompt_row(items[0], options[0][0])])
    assert processor in encoding._VERDICTS and processor in encoding._IMAGES
    before = len(encoding._VERDICTS)
    del processor
    gc.collect()
    assert len(encoding._VERDICTS) == before - 1


def test_cache_layout_equals_reference(setup, monkeypatch):
    """The key/value-cache layout (for attention kernels without custom masks) gives the same scores."""
    model, processor, items, options, _ = setup
    expected = _reference(model, processor, items, options)
    monkeypatch.setattr(option_scoring, "_tree_masks", lambda m: False)
    monkeypatch.setattr(option_scoring, "_score_chunk_tree", lambda *a, **k: pytest.fail("tree layout used"))
    monkeypatch.setattr(option_scoring, "_reference_groups", lambda *a, **k: pytest.fail("fell back to the reference"))
    calls = []
    real = option_scoring._score_chunk
    monkeypatch.setattr(option_scoring, "_score_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    for batch_size in (2, 32):
        _assert_same(_shared(model, processor, items, options, batch_size), expected)
    assert calls  # the cache layout scored them


def test_a_model_that_scores_differently_falls_back(setup, monkeypatch):
    """Checked once per model on its first question: scores off by more than float error mean the reference path."""
    model, processor, items, options, _ = setup
    monkeypatch.setattr(option_scoring, "_CHECKED", option_scoring.weakref.WeakKeyDictionary())
    real = option_scoring._score_chunk_tree
    off = lambda *a, **k: {q: [(lp + 0.5, g) for lp, g in s] for q, s in real(*a, **k).items()}  # noqa: E731
    monkeypatch.setattr(option_scoring, "_score_chunk_tree", off)
    with pytest.warns(UserWarning, match="differ"):
        got = _shared(model, processor, items, options, 8)
    _assert_same(got, _reference(model, processor, items, options))
    assert option_scoring._CHECKED[model] == {(option_scoring.training_template(processor), True): False}
