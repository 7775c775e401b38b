"""``activations``: COINCIDE's per-sample embedding from a reference model's attention outputs (docs/scorers.md).

For each chosen decoder layer, the self-attention ``o_proj`` output is averaged over the image tokens and over the
text tokens separately (text = every non-padding, non-image token of the templated conversation: system, user and
assistant), squashed with tanh and L2-normalised. The pieces are concatenated layer-major
``[l0_img, l0_txt, l1_img, l1_txt, ...]`` and divided by ``sqrt(2·n_layers)``: each row has unit norm.
A consumer can split a row into ``2·n_layers`` blocks of ``hidden`` values (odd blocks are the text halves).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from mixlab import hookimpl
from mixlab.caches import ArrayCache, sample_key
from mixlab.components import RunContext
from mixlab.data import Sample
from mixlab.hookspecs import Register
from mixlab.models.scorer import ModelScorer, ModelScorerOptions, model_settings


class ActivationsOptions(ModelScorerOptions):
    layers: list[int] | None = Field(
        None,
        description="0-indexed decoder layers of the language model; default: 5 evenly spaced up to ~83% depth "
        "(COINCIDE's 3, 7, 11, 15, 19 for 24 layers; [0, 1] for a 2-layer model).",
    )
    text_only: Literal["zero_image", "text_twice"] = Field(
        "zero_image",
        description='Samples without image tokens: "zero_image" = image blocks zero, text blocks scaled by '
        '1/sqrt(n_layers) so the row keeps unit norm; "text_twice" = the text block fills the image slot too.',
    )


def layers_for(model_dir: Any, layers: list[int] | None) -> list[int]:
    """The chosen layers, checked against the checkpoint's layer count (read from its config only)."""
    from transformers import AutoConfig

    from mixlab.errors import UserError
    from mixlab.models.layers import default_layers

    config = AutoConfig.from_pretrained(model_dir)
    n = int(config.get_text_config().num_hidden_layers)
    if layers is None:
        return default_layers(n)
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad or not layers:
        raise UserError(
            f"scorer activations: `layers` {layers} must be non-empty and within 0..{n - 1} for {model_dir}"
        )
    return list(layers)


class ActivationsScorer(ModelScorer):
    """Column ``embedding``: float32, shape (n, 2·n_layers·hidden), row-aligned with the samples."""

    name = "activations"
    Options = ActivationsOptions
    options: ActivationsOptions

    def score(self, samples: list[Sample], ctx: RunContext) -> dict[str, np.ndarray]:
        from mixlab.models.sample_scores import pooled_activations_batches

        o = self.options
        model_dir = self.model_dir(ctx)
        layers = layers_for(model_dir, o.layers)
        key = {"scorer": "activations", "layers": layers, "text_only": o.text_only, **model_settings(model_dir)}
        cache = ArrayCache(ctx.cache_dir("activations", key))
        keys = [sample_key(s) for s in samples]
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in cache.items}.values())
        with ctx.progress("activations", len(samples)) as advance:
            advance(len(samples) - len(todo))
            if todo:
                from mixlab.models.loading import load_model

                ctx.log(f"activations: {len(samples) - len(todo)} samples cached, scoring {len(todo)} with {model_dir}")
                model, processor = load_model(model_dir)
                pending = [samples[i] for i in todo]
                batches = self.batches(processor, pending)
                for batch, rows in pooled_activations_batches(
                    model, processor, pending, layers, batches, text_only=o.text_only, at_once=o.batches_at_once
                ):
                    cache.add([keys[todo[j]] for j in batch], rows)
                    advance(len(batch))
        if not samples:
            return {"embedding": np.zeros((0, 0), dtype=np.float32)}
        return {"embedding": np.stack([cache.items[k] for k in keys]).astype(np.float32, copy=False)}


@hookimpl
def register_scorers(register: Register) -> None:
    register(ActivationsScorer)
