"""Pretrain the tiny preset's vision tower on labelled toy scenes: the toy world's stand-in for CLIP.

A real LLaVA starts from a vision encoder that already sees colours, shapes, counts and text. A vision tower
initialised at random does not, and on two CPU cores it cannot learn them from a few thousand instruction samples.
So the tiny preset gives its tower a short supervised pretraining: scenes drawn by the toy world's makers from their
own random streams (``pretrain/<category>``, never a training or benchmark image), one linear head per category
predicting the scene's true value from the mean of the patch features (what the projector reads). No question, answer
format or instruction is involved; the heads are thrown away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mixlab.models.pretraining import train_steps
from mixlab.toyworld import scenes
from mixlab.toyworld.rng import stream
from mixlab.toyworld.vocab import COLOR_NAMES, COUNTS, LETTERS, POSITIONS, SHAPES

# category → (maker, the values its head predicts)
TASKS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "color": (scenes.color, COLOR_NAMES),
    "shape": (scenes.shape, SHAPES),
    "count": (scenes.count, COUNTS),
    "spatial": (scenes.spatial, POSITIONS),
    "ocr": (scenes.ocr, LETTERS),
    "chart": (scenes.chart, COLOR_NAMES),
}


@dataclass(frozen=True)
class VisionPretraining:
    """How long and how hard: `steps` batches of `batch_size` scenes from a pool of `pool` scenes per category."""

    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 2e-3
    pool: int = 1500


def scene_pool(seed: int, per_category: int, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8, task index and label index per image, drawn from the pretrain streams."""
    images, tasks, labels = [], [], []
    for t, (name, (maker, values)) in enumerate(TASKS.items()):
        rng = stream(seed, f"pretrain/{name}")
        for _ in range(per_category):
            item = maker(rng, image_size)
            images.append(np.asarray(item.image, dtype=np.uint8))
            tasks.append(t)
            labels.append(values.index(item.answer))
    return np.stack(images), np.array(tasks), np.array(labels)


def pretrain_vision(
    model: Any,
    processor: Any,
    seed: int,
    settings: VisionPretraining,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Train ``model``'s vision tower in place; returns the held-out accuracy per category (20% of the pool)."""
    import torch

    torch.manual_seed(seed)
    image_size = model.config.vision_config.image_size
    images, tasks, labels = scene_pool(seed, settings.pool, image_size)
    pixels = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    n_val = len(images) // 5
    order = np.random.default_rng(seed).permutation(len(images))
    val, train = order[:n_val], order[n_val:]

    tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
    hidden = tower.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(hidden, len(values)) for _, values in TASKS.values())
    params = list(tower.parameters()) + list(heads.parameters())
    task_t, label_t = torch.as_tensor(tasks), torch.as_tensor(labels)

    def logits_and_loss(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        features = tower(pixel_values=pixels[idx], output_hidden_states=True).hidden_states[-1][:, 1:].mean(1)
        loss, correct = torch.zeros(()), torch.zeros(len(idx), dtype=torch.bool)
        for t, head in enumerate(heads):
            rows = (task_t[idx] == t).nonzero().squeeze(1)
            if len(rows):
                out = head(features[rows])
                loss = loss + torch.nn.functional.cross_entropy(out, label_t[idx][rows], reduction="sum")
                correct[rows] = out.argmax(-1) == label_t[idx][rows]
        return loss / len(idx), correct

    tower.train()
    rng = np.random.default_rng(seed)
    train_steps(
        params,
        settings.learning_rate,
        settings.steps,
        lambda _: logits_and_loss(rng.choice(train, size=settings.batch_size, replace=False))[0],
        progress,
    )
    tower.eval()
    with torch.no_grad():
        _, correct = logits_and_loss(val)
    return {name: round(float(correct[tasks[val] == t].float().mean()), 3) for t, name in enumerate(TASKS)}
