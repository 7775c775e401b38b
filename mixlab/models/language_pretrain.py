"""Pretrain the tiny preset's language model on reading questions: the toy world's stand-in for Vicuna.

A real LLaVA starts from a language model that already reads: told "The circle is red.", it answers "What color is
the circle?", "Is the circle blue?" and a lettered choice. A language model initialised at random does not, and on two
CPU cores it cannot learn the comparison behind a yes/no answer from a few thousand mixed instruction samples
(docs/toyworld.md, "Why yes/no stayed at chance"). So the tiny preset gives its language model a short text-only
pretraining: scenes drawn by the toy world's makers from their own random streams (``pretrain-text/<category>``,
never a training or benchmark item), the picture replaced by the sentence saying what it shows, the question put in
the instruction formats. No image is involved; the vision tower and projector are not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mixlab.data import Sample, sample_to_row
from mixlab.models.parts import LM, param_part
from mixlab.models.pretraining import train_steps
from mixlab.toyworld import scenes
from mixlab.toyworld.formats import render
from mixlab.toyworld.rng import stream
from mixlab.toyworld.sources import MIX

CATEGORIES = ("color", "shape", "count", "spatial", "ocr", "chart", "science", "text")


@dataclass(frozen=True)
class LanguagePretraining:
    """`steps` batches of `batch_size` reading questions from a pool of `pool` questions per category."""

    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 1e-3
    pool: int = 500


def reading_questions(seed: int, per_category: int, image_size: int) -> list[Sample]:
    """Text-only samples: "Context: <what the scene shows>" and a question about it, in a random format."""
    names = sorted(MIX)  # the instruction sources' format mix
    shares = np.array([MIX[k] for k in names])
    samples: list[Sample] = []
    for category in CATEGORIES:
        rng = stream(seed, f"pretrain-text/{category}")
        for i in range(per_category):
            item = scenes.MAKERS[category](rng, image_size)
            context = " ".join(part for part in (item.hint, item.statement) if part) or None
            fmt = names[int(rng.choice(len(names), p=shares))]
            rendered = render(replace(item, image=None, hint=context), fmt, rng)
            conversations = [{"from": "human", "value": rendered.prompt}, {"from": "gpt", "value": rendered.answer}]
            samples.append(
                Sample(
                    id=f"reading-{category}-{i}",
                    source="reading",
                    category=category,
                    image=None,
                    conversations=conversations,
                    noisy=False,
                )
            )
    return samples


def pretrain_language(
    model: Any,
    processor: Any,
    seed: int,
    settings: LanguagePretraining,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Train ``model``'s language model in place; returns the held-out share of questions answered exactly (every
    answer token the most likely one) per category (20% of the pool)."""
    import torch

    from mixlab.models.collator import IGNORE
    from mixlab.models.encoding import Collate

    torch.manual_seed(seed)
    samples = reading_questions(seed, settings.pool, model.config.vision_config.image_size)
    collator = Collate(processor)
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = len(samples) // 5
    val, train = order[:n_val], order[n_val:]

    def batch(idx: np.ndarray) -> dict[str, Any]:
        return dict(collator([sample_to_row(samples[int(i)]) for i in idx]))

    params = [p for name, p in model.named_parameters() if param_part(name) == LM]
    model.train()
    rng = np.random.default_rng(seed)
    train_steps(
        params,
        settings.learning_rate,
        settings.steps,
        lambda _: model(**batch(rng.choice(train, size=settings.batch_size, replace=False))).loss,
        progress,
    )
    model.eval()
    exact = np.zeros(len(val), dtype=bool)
    with torch.no_grad():
        for start in range(0, len(val), 64):
            inputs = batch(val[start : start + 64])
            labels = inputs.pop("labels")
            predicted = model(**inputs).logits[:, :-1].argmax(-1)
            target = labels[:, 1:]
            trained = target != IGNORE
            exact[start : start + len(labels)] = ((predicted == target) | ~trained).all(-1).numpy()
    category = np.array([samples[int(i)]["category"] for i in val])
    return {name: round(float(exact[category == name].mean()), 3) for name in CATEGORIES}
