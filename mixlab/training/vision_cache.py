"""A frozen vision tower's features computed once per image and reused: across epochs, and across runs on disk.

What is cached is the projector's input, the selected layer's hidden states (the trainable projector still runs on
every step), keyed by the image's content key (the collator's ``image_keys``: a hash of the file's bytes, or else of
the pixel values) under a namespace that hashes the tower's weights, the feature layer and strategy, the dtype and
the image processor's settings. Installed on a LLaVA model by replacing its ``get_image_features`` (the weights and
the saved model are untouched). Only valid while the tower is frozen and deterministic (no dropout).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

_BATCH_KEYS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("mixlab_image_keys", default=None)


def _tensor_bytes(tensor: Any) -> bytes:
    import torch

    return tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes()


def pixel_key(pixels: Any) -> str:
    """Content key of one image's pixel values (when the collator gave no key)."""
    material = f"{pixels.dtype}:{tuple(pixels.shape)}:".encode() + _tensor_bytes(pixels)
    return "tensor:" + hashlib.blake2b(material, digest_size=16).hexdigest()


def llava_core(model: Any) -> Any:
    """The LlavaModel inside a LlavaForConditionalGeneration (the module with the tower and the projector)."""
    from transformers.models.llava.modeling_llava import LlavaModel

    core = getattr(model, "model", None)
    if type(core) is not LlavaModel:
        from mixlab.errors import UserError

        raise UserError(
            "vision_cache works on LLaVA models (LlavaForConditionalGeneration); this model is "
            f"{type(model).__name__}. Set vision_cache = false."
        )
    return core


def tower_namespace(core: Any, processor: Any = None) -> str:
    """Hash of what the features depend on besides the image: tower weights, layer, strategy, dtype, processor."""
    h = hashlib.blake2b(digest_size=16)
    config = core.config
    image_processor = getattr(processor, "image_processor", None)
    settings = {
        "tower": type(core.vision_tower).__name__,
        "layer": config.vision_feature_layer,
        "strategy": config.vision_feature_select_strategy,
        "processor": image_processor.to_dict() if image_processor is not None else None,
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(core.vision_tower.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()


class VisionFeatureCache:
    """Projector inputs by image key, in memory (one training) or in `folder` (shared by every run that sets it)."""

    def __init__(self, namespace: str, folder: Path | None = None) -> None:
        self.namespace = namespace
        self.folder = Path(folder) / namespace if folder is not None else None
        self.memory: dict[str, Any] = {}
        self.computed = 0
        self.reused = 0

    def get(self, key: str) -> Any:
        if self.folder is None:
            return self.memory.get(key)
        import torch

        path = self.folder / f"{key.replace(':', '-')}.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):  # absent, or cut by a crash: recomputed
            return None

    def put(self, key: str, features: Any) -> None:
        features = features.detach().to("cpu", copy=True)  # a copy: not a view that keeps the batch alive
        if self.folder is None:
            self.memory[key] = features
            return
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(features, f)
        os.replace(tmp, self.folder / f"{key.replace(':', '-')}.pt")

    def install(self, model: Any) -> None:
        """Make `model` take its image features through this cache (the model's tower must stay frozen)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        core = llava_core(model)
        original_features, original_forward = core.get_image_features, core.forward
        cache = self

        def forward(*args: Any, image_keys: list[str] | None = None, **kwargs: Any) -> Any:
            token = _BATCH_KEYS.set(image_keys)
            try:
                return original_forward(*args, **kwargs)
            finally:
                _BATCH_KEYS.reset(token)

        def get_image_features(
            pixel_values: Any,
            vision_feature_layer: Any = None,
            vision_feature_select_strategy: Any = None,
            image_sizes: Any = None,
            **kwargs: Any,
        ) -> Any:
            layer = core.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
            strategy = vision_feature_select_strategy or core.config.vision_feature_select_strategy
            if image_sizes is not None or (layer, strategy) != (
                core.config.vision_feature_layer,
                core.config.vision_feature_select_strategy,
            ):
                return original_features(
                    pixel_values=pixel_values,
                    vision_feature_layer=layer,
                    vision_feature_select_strategy=strategy,
                    image_sizes=image_sizes,
                    **kwargs,
                )
            keys = _BATCH_KEYS.get()
            if keys is None or len(keys) != len(pixel_values):
                keys = [pixel_key(p) for p in pixel_values]
            found = [cache.get(k) for k in keys]
            missing = [i for i, f in enumerate(found) if f is None]
            if missing:
                captured: list[Any] = []
                hook = core.multi_modal_projector.register_forward_hook(lambda m, a, o: captured.append(a[0]))
                try:
                    with torch.no_grad():
                        original_features(
                            pixel_values=pixel_values[missing],
                            vision_feature_layer=layer,
                            vision_feature_select_strategy=strategy,
                            **kwargs,
                        )
                finally:
                    hook.remove()
                for i, features in zip(missing, captured[0], strict=True):
                    cache.put(keys[i], features)
                    found[i] = features
            cache.computed += len(missing)
            cache.reused += len(keys) - len(missing)
            projector = core.multi_modal_projector
            weight = next(projector.parameters())
            selected = torch.stack([f.to(weight.device) for f in found])
            image_features = projector(selected)
            # per-image features in a list, as transformers' own LLaVA get_image_features (the field says Tensor)
            pooled = list(image_features)
            return BaseModelOutputWithPooling(last_hidden_state=selected, pooler_output=pooled)  # type: ignore[arg-type]

        core.forward = forward
        core.get_image_features = get_image_features
