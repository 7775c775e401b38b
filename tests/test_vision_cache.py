"""Frozen vision tower features cached by image: the same training with and without, the tower run once per image."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from mixlab.data import sample_to_row
from mixlab.models.collator import VisionCollator
from mixlab.training.sft import SFTSettings, train_llava
from mixlab.training.vision_cache import VisionFeatureCache, llava_core, tower_namespace
from tests.test_packing import varied_samples
from tests.tiny_vlm import build_test_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcache")
    return build_test_model(root / "base"), varied_samples(20, root / "img", seed=5)


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def _tower_calls(model) -> list[int]:
    calls: list[int] = []
    llava_core(model).vision_tower.register_forward_hook(lambda m, a, o: calls.append(len(a[0])))
    return calls


def test_cached_features_equal_computed(setup):
    from mixlab.models.loading import load_model

    base, samples = setup
    model, processor = load_model(base)
    collator = VisionCollator(processor, image_keys=True)
    batch = collator([sample_to_row(s) for s in samples[:8]])
    assert len(batch["image_keys"]) == len(batch["pixel_values"]) == sum(bool(s["image"]) for s in samples[:8])
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "image_keys")}
    with torch.no_grad():
        plain = model(**inputs).logits
        cache = VisionFeatureCache(tower_namespace(llava_core(model), processor))
        cache.install(model)
        calls = _tower_calls(model)
        first = model(**inputs, image_keys=batch["image_keys"]).logits
        again = model(**inputs, image_keys=batch["image_keys"]).logits
        unkeyed = model(**inputs).logits  # no keys from the collator: keyed by the pixels
    assert calls == [len(batch["pixel_values"]), len(batch["pixel_values"])]  # keyed twice, pixels once
    assert cache.computed == 2 * len(batch["pixel_values"]) and cache.reused == len(batch["pixel_values"])
    for logits in (first, again, unkeyed):
        assert torch.allclose(logits, plain, atol=1e-5)
    assert torch.equal(first, again)


def test_same_training_with_cache(setup, tmp_path):
    """Two epochs, packed and padded: the cache changes neither loss nor weights, and each image is encoded once."""
    base, samples = setup
    images = sum(bool(s["image"]) for s in samples)
    common = dict(epochs=2, learning_rate=1e-3, batch_size=8, warmup_ratio=0.0, save_steps=100)
    for packing in (False, True):
        plain = train_llava(samples, base, tmp_path / f"plain{packing}", SFTSettings(**common, packing=packing))
        cached = train_llava(
            samples, base, tmp_path / f"cached{packing}", SFTSettings(**common, packing=packing, vision_cache=True)
        )
        assert cached["vision_features"] == {"computed": images, "reused": images}
        assert "vision_features" not in plain
        assert cached["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-6)
        a, b = _weights(tmp_path / f"plain{packing}"), _weights(tmp_path / f"cached{packing}")
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_cache_folder_shared_across_runs(setup, tmp_path):
    base, samples = setup
    images = sum(bool(s["image"]) for s in samples)
    settings = SFTSettings(batch_size=8, learning_rate=1e-3, vision_cache=True, vision_cache_dir=str(tmp_path / "vf"))
    first = train_llava(samples, base, tmp_path / "a", settings)
    assert first["vision_features"] == {"computed": images, "reused": 0}
    second = train_llava(samples, base, tmp_path / "b", settings.model_copy(update={"seed": 1}))
    assert second["vision_features"] == {"computed": 0, "reused": images}
    assert len(list((tmp_path / "vf").rglob("*.pt"))) == images
    other = build_test_model(tmp_path / "other", seed=1)  # another tower: another namespace, nothing reused
    third = train_llava(samples, other, tmp_path / "c", settings)
    assert third["vision_features"] == {"computed": images, "reused": 0}


def test_cache_needs_frozen_tower():
    with pytest.raises(ValidationError, match="frozen vision tower"):
        SFTSettings(vision_cache=True, vision_lr=1e-5)
    with pytest.raises(ValidationError, match="vision_cache is false"):
        SFTSettings(vision_cache_dir="x")
