"""Pixel values of a batch at once: exactly the image processor's own output, the fast path taken only where it
matched the processor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from mixlab.models import pixels
from mixlab.models.pixels import image_inputs
from tests.tiny_vlm import build_test_model


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(build_test_model(tmp_path_factory.mktemp("pixels") / "model", seed=1))


def noise(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB image of uniform noise over every 8-bit value."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def reference(processor, pictures) -> torch.Tensor:
    return processor(images=[row for row in pictures if row], return_tensors="pt")["pixel_values"]


def test_images_at_the_input_size_take_the_fast_path_and_equal_the_processor(processor):
    side = processor.image_processor.crop_size["height"]
    pictures = [[noise((side, side), 0)], [noise((side, side), 1)], [], [noise((side, side), 2)]]
    out = image_inputs(processor, pictures)
    assert set(out) == {"pixel_values"}
    assert torch.equal(out["pixel_values"], reference(processor, pictures))
    assert pixels._VERDICTS[processor][((side, side), "RGB")] is True


def test_images_the_processor_resizes_go_through_it(processor):
    pictures = [[noise((80, 48), 3)], [noise((80, 48), 4)]]
    out = image_inputs(processor, pictures)
    assert torch.equal(out["pixel_values"], reference(processor, pictures))
    assert pixels._VERDICTS[processor][((80, 48), "RGB")] is False


def test_a_batch_of_several_sizes_goes_through_the_processor(processor, monkeypatch):
    side = processor.image_processor.crop_size["height"]
    pictures = [[noise((side, side), 5)], [noise((side + 16, side), 6)]]
    monkeypatch.setattr(pixels, "_rescaled_and_normalised", lambda *a: pytest.fail("fast path on mixed sizes"))
    assert torch.equal(image_inputs(processor, pictures)["pixel_values"], reference(processor, pictures))


@pytest.mark.parametrize("setting", ["do_rescale", "do_normalize"])
def test_the_processors_settings_are_followed(processor, setting):
    changed = copy.deepcopy(processor)
    setattr(changed.image_processor, setting, False)
    side = changed.image_processor.crop_size["height"]
    pictures = [[noise((side, side), 7)], [noise((side, side), 8)]]
    expected = reference(changed, pictures)
    assert torch.equal(torch.as_tensor(image_inputs(changed, pictures)["pixel_values"]), expected)
    assert not torch.equal(expected, reference(processor, pictures))


def test_arrays_go_through_the_processor(processor, monkeypatch):
    side = processor.image_processor.crop_size["height"]
    pictures = [[np.asarray(noise((side, side), 9))]]
    monkeypatch.setattr(pixels, "_rescaled_and_normalised", lambda *a: pytest.fail("fast path on an array"))
    assert torch.equal(image_inputs(processor, pictures)["pixel_values"], reference(processor, pictures))


def test_no_images_no_inputs(processor):
    assert image_inputs(processor, [[], []]) == {}
