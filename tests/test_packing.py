"""Padding-free training: packed rows give every sample the loss it has alone, and train like padded batches."""

from __future__ import annotations

import random

import pytest
import torch

from mixlab.data import Sample, sample_to_row
from mixlab.errors import UserError
from mixlab.models.collator import IGNORE, VisionCollator
from mixlab.models.packing import PACKED_SDPA, pack_batch, plan_rows, register_packed_sdpa
from tests.tiny_vlm import NAMES, build_test_model, colour_samples

FOLLOW_UPS = [
    ("Are you sure?", "Yes, it is {c}."),
    ("What shape is in the image?", "square"),
    ("Describe the picture.", "There is a small object on a plain background."),
    ("How many objects are there?", "one"),
]


def varied_samples(n: int, root, seed: int = 0) -> list[Sample]:
    """Colour samples with 0 to 3 follow-up turns; every fifth is text-only: lengths differ within a batch."""
    rng = random.Random(seed)
    out = []
    for i, s in enumerate(colour_samples(n, root, seed=seed, prefix="v")):
        colour = s["conversations"][1]["value"]
        turns = list(s["conversations"])
        for q, a in rng.sample(FOLLOW_UPS, rng.randint(0, 3)):
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a.format(c=colour)}]
        if i % 5 == 4:
            turns = [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": NAMES[i % len(NAMES)]}]
            out.append(Sample({**s, "image": None, "conversations": turns}))
        else:
            out.append(Sample({**s, "conversations": turns}))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    return build_test_model(root / "base"), varied_samples(24, root / "img", seed=3)


def _model(base, attn: str):
    from mixlab.models.loading import load_model

    model, processor = load_model(base, attn_implementation="sdpa" if attn == PACKED_SDPA else attn)
    if attn == PACKED_SDPA:
        model.set_attn_implementation({"text_config": register_packed_sdpa()})
    return model.eval(), processor


def _token_losses(model, batch: dict) -> torch.Tensor:
    """Loss of each token given the ones before it, at the token's own position (0 where not trained).

    use_cache=False, as in training: with a KV cache transformers does not read packing from position_ids."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs["use_cache"] = False
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    labels = batch["labels"]
    out = torch.zeros(labels.shape)
    out[:, 1:] = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none"
    )
    return out


def _alone(model, processor, samples) -> list[tuple[float, int]]:
    """(summed loss, trained tokens) of each sample in a batch of its own."""
    collator = VisionCollator(processor)
    out = []
    for s in samples:
        batch = collator([sample_to_row(s)])
        out.append((float(_token_losses(model, batch).sum()), int((batch["labels"][:, 1:] != IGNORE).sum())))
    return out


def _packed(model, processor, samples, pack_length) -> tuple[list[tuple[float, int]], dict]:
    collator = VisionCollator(processor, packing=True, pack_length=pack_length)
    batch = collator([sample_to_row(s) for s in samples])
    losses = _token_losses(model, batch)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(samples)
    for span in collator.last_spans:
        piece = slice(span.start, span.start + span.length)
        trained = int((batch["labels"][span.row, piece] != IGNORE).sum())
        out[span.sample] = (float(losses[span.row, piece].sum()), trained)
    return out, batch


@pytest.mark.parametrize("attn", ["sdpa", "eager", PACKED_SDPA])
@pytest.mark.parametrize("pack_length", [None, 10_000, 1])
def test_packed_losses_equal_alone(setup, attn, pack_length):
    """Per-sample summed losses and trained-token counts, packed vs one sample at a time."""
    base, samples = setup
    model, processor = _model(base, attn)
    batch_samples = samples[:12]
    alone = _alone(model, processor, batch_samples)
    packed, batch = _packed(model, processor, batch_samples, pack_length)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    rows = {None: (2, 12), 10_000: (1, 1), 1: (12, 12)}[pack_length]
    assert rows[0] <= batch["input_ids"].shape[0] <= rows[1]
    assert [n for _, n in packed] == [n for _, n in alone]
    assert sum(n for _, n in alone) > 3 * len(batch_samples)
    for (p, _), (a, _) in zip(packed, alone, strict=True):  # rel 1e-6: a float32 sum of ~150 is exact to ~1.5e-5
        assert p == pytest.approx(a, abs=1e-5, rel=1e-6)


def test_packed_sdpa_keeps_padded_batches_right(setup):
    """With an attention mask (padded batches, scoring) mixlab's packed sdpa is plain sdpa."""
    base, samples = setup
    plain, processor = _model(base, "sdpa")
    packed, _ = _model(base, PACKED_SDPA)
    batch = VisionCollator(processor)([sample_to_row(s) for s in samples[:6]])
    assert bool((batch["attention_mask"] == 0).any())
    assert torch.allclose(_token_losses(plain, batch), _token_losses(packed, batch), atol=1e-6)


def test_images_follow_their_samples(setup):
    """A packed batch whose images were left in the padded order would give other losses: the check has teeth."""
    base, samples = setup
    model, processor = _model(base, "sdpa")
    batch_samples = samples[:9]
    _, batch = _packed(model, processor, batch_samples, None)
    alone = _alone(model, processor, batch_samples)
    padded = VisionCollator(processor)([sample_to_row(s) for s in batch_samples])
    wrong = dict(batch, pixel_values=padded["pixel_values"])
    assert not torch.equal(wrong["pixel_values"], batch["pixel_values"])  # packing did reorder them
    good = float(_token_losses(model, batch).sum())
    assert good == pytest.approx(sum(a for a, _ in alone), abs=1e-4)
    assert abs(float(_token_losses(model, wrong).sum()) - good) > 1e-3


def test_first_token_of_each_sample_untrained(setup):
    base, samples = setup
    _, processor = _model(base, "sdpa")
    collator = VisionCollator(processor, packing=True)
    batch = collator([sample_to_row(s) for s in samples[:8]])
    for span in collator.last_spans:
        assert int(batch["labels"][span.row, span.start]) == IGNORE
        assert batch["position_ids"][span.row, span.start : span.start + span.length].tolist() == list(
            range(span.length)
        )
    assert collator.tokens_seen == sum(span.length for span in collator.last_spans)


def test_plan_rows():
    assert plan_rows([5, 3, 4, 2], 7) == [[0, 3], [1, 2]]
    assert plan_rows([9, 3], 4) == [[0], [1]]  # a sample longer than the row is alone
    assert sorted(i for row in plan_rows([1] * 10, 3) for i in row) == list(range(10))


def test_pack_batch_rejects_unknown_entries():
    batch = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.ones(2, 3, dtype=torch.long),
        "pixel_attention_mask": torch.ones(2, 3),
    }
    with pytest.raises(UserError, match="pixel_attention_mask"):
        pack_batch(batch, [0, 0], pad_token_id=0)


def test_packed_training_equals_padded(setup, tmp_path, monkeypatch):
    """Two epochs of train_llava with packing end with the weights and loss of padded training."""
    from safetensors.torch import load_file

    import mixlab.models.packing as packing
    from mixlab.training.sft import SFTSettings, train_llava

    base, samples = setup
    packed_batches = []
    real = packing.pack_batch
    monkeypatch.setattr(packing, "pack_batch", lambda *a, **k: packed_batches.append(1) or real(*a, **k))
    common = dict(epochs=2, learning_rate=1e-3, batch_size=8, warmup_ratio=0.0, logging_steps=1, save_steps=100)
    padded = train_llava(samples, base, tmp_path / "padded", SFTSettings(**common))
    assert not packed_batches
    packed = train_llava(samples, base, tmp_path / "packed", SFTSettings(**common, packing=True))
    assert len(packed_batches) >= 6  # every training batch was packed (the packed run really packed)
    assert packed["steps"] == padded["steps"] == 6
    assert packed["train_loss"] == pytest.approx(padded["train_loss"], abs=1e-5)
    a, b = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("padded", "packed"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_attention_for_packing():
    """sdpa becomes mixlab's per-sample sdpa (one row); flash-attn takes one row only; eager keeps its rows."""
    from types import SimpleNamespace

    from mixlab.training.sft import ONE_ROW, _packed_attention

    def model(attn: str) -> SimpleNamespace:
        text = SimpleNamespace(_attn_implementation=attn)
        stub = SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: text), set_to=None)
        stub.set_attn_implementation = lambda value: setattr(stub, "set_to", value)
        return stub

    sdpa = model("sdpa")
    assert _packed_attention(sdpa, None) == ONE_ROW and sdpa.set_to == {"text_config": PACKED_SDPA}
    assert _packed_attention(model("sdpa"), 512) == 512
    assert _packed_attention(model("eager"), None) is None
    assert _packed_attention(model("flash_attention_2"), None) == ONE_ROW
    with pytest.raises(UserError, match="one row"):
        _packed_attention(model("flash_attention_2"), 512)
    with pytest.raises(UserError, match="flex_attention"):
        _packed_attention(model("flex_attention"), None)


@pytest.mark.parametrize(
    "options",
    [{}, {"packing": True}, {"image_keys": True}, {"max_length": 40}, {"max_length": 400, "packing": True}],
    ids=["padded", "packed", "image-keys", "truncated", "long-enough"],
)
def test_training_collator_gives_the_vision_collators_batches(setup, options, monkeypatch):
    """The trainer's collator encodes with `Collate` and gives TRL's collator's tensors, packing and truncation
    included; TRL's collator runs only for a batch that max_length cuts."""
    from mixlab.models.encoding import TrainingCollator
    from mixlab.models.loading import load_model

    base, samples = setup
    _, processor = load_model(base)
    rows = [sample_to_row(s) for s in samples]
    reference, fast = VisionCollator(processor, **options), TrainingCollator(processor, **options)
    expected = [dict(reference(rows[i : i + 8])) for i in range(0, len(rows), 8)]
    encoded_by_trl = []
    original = VisionCollator.encode

    def counted(self, rows):
        encoded_by_trl.append(self)
        return original(self, rows)

    monkeypatch.setattr(VisionCollator, "encode", counted)
    got = [dict(fast(rows[i : i + 8])) for i in range(0, len(rows), 8)]
    for want, have in zip(expected, got, strict=True):
        assert set(want) == set(have)
        for key, value in want.items():
            assert value == have[key] if isinstance(value, list) else torch.equal(value, have[key]), key
    assert fast.tokens_seen == reference.tokens_seen > 0
    assert (fast in encoded_by_trl) == ("max_length" in options and options["max_length"] < 100)
