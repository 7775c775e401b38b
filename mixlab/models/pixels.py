"""Pixel values for a batch of images, in one array operation where the image processor's own loop is not needed.

An image processor of the CLIP kind resizes, crops, rescales and normalises each image in turn. For images that are
already its input size (the toy world's, or a data set prepared at that size) the resize and the crop change nothing,
and the per-image calls cost more than the arithmetic. `image_inputs` then rescales and normalises all the images of
a batch at once, in the processor's own arithmetic (rescale in float64, cast to float32, normalise in float32). It
does so for an image size and mode only once the processor's output for one image of that kind has been matched
exactly (remembered per processor); every other batch goes through the processor.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

Kind = tuple[tuple[int, int], str]

_VERDICTS: weakref.WeakKeyDictionary[Any, dict[Kind, bool]] = weakref.WeakKeyDictionary()


def image_inputs(processor: Any, pictures: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The processor's image inputs (pixel values...) for a batch whose rows hold these images (lists, as
    `VisionCollator` passes them: one per row, empty for a row without images); {} without any image."""
    from PIL import Image

    flat = [image for row in pictures for image in row]
    if not flat:
        return {}
    kinds = {(image.size, image.mode) if isinstance(image, Image.Image) else None for image in flat}
    if len(kinds) == 1 and (kind := kinds.pop()) is not None and _fast_path_matches(processor, kind, flat[0]):
        return {"pixel_values": _rescaled_and_normalised(processor.image_processor, flat)}
    return dict(processor(images=[list(row) for row in pictures], return_tensors="pt"))


def _fast_path_matches(processor: Any, kind: Kind, example: Any) -> bool:
    """Whether `_rescaled_and_normalised` gives the processor's own output for images of this kind, decided on the
    first one seen and remembered while the processor lives."""
    try:
        known = _VERDICTS.setdefault(processor, {})
    except TypeError:  # a processor that cannot be weakly referenced: no fast path
        return False
    if kind not in known:
        known[kind] = _matches_processor(processor, example)
    return known[kind]


def _matches_processor(processor: Any, image: Any) -> bool:
    import torch

    try:
        fast = _rescaled_and_normalised(processor.image_processor, [image])
    except (AttributeError, TypeError, ValueError):
        return False
    reference = dict(processor(images=[[image]], return_tensors="pt"))
    return set(reference) == {"pixel_values"} and torch.equal(torch.as_tensor(reference["pixel_values"]), fast)


def _rescaled_and_normalised(image_processor: Any, images: Sequence[Any]) -> Any:
    """The images stacked channels-first, rescaled and normalised as the processor's settings say, in its dtypes."""
    import torch

    pixels = np.stack([np.asarray(image) for image in images])
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise ValueError(f"expected 8-bit images with channels, got {pixels.dtype} of shape {pixels.shape[1:]}")
    if image_processor.do_rescale:
        values = (pixels.astype(np.float64) * image_processor.rescale_factor).astype(np.float32)
    else:
        values = pixels.astype(np.float32)
    if image_processor.do_normalize:
        mean = np.asarray(image_processor.image_mean, dtype=np.float32)
        std = np.asarray(image_processor.image_std, dtype=np.float32)
        values = (values - mean) / std
    return torch.from_numpy(np.ascontiguousarray(values.transpose(0, 3, 1, 2)))
