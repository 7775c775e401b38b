"""The base of scorers that run a reference model: which model, its cache identity, length-bucketed batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab.caches import checkpoint_hash
from mixlab.components import Options, RunContext, Scorer
from mixlab.data import Sample


class ModelScorerOptions(Options):
    model: str | None = Field(
        None,
        description="Reference checkpoint: a local HF model dir, relative to the recipe. Default: the base model.",
    )
    batch_size: int = Field(
        64, ge=1, description="Samples per forward pass (neighbours in length order); the scores do not depend on it."
    )
    batches_at_once: int | None = Field(
        None,
        ge=1,
        description="Batches run at once on a CPU, each on its share of torch's threads (default: 2 where torch has "
        "at least 2 threads, else 1; always 1 on a GPU). The scores are the same either way.",
    )


class ModelScorer(Scorer):
    """Base of the scorers that run a reference model: model resolution, bucketed batches, lazy loading."""

    options: ModelScorerOptions
    path_options = frozenset({"model"})

    def model_dir(self, ctx: RunContext) -> Path:
        return self.resolve(self.options.model) if self.options.model else Path(ctx.base_model)

    def fingerprint(self) -> str:
        """The named reference checkpoint's content (new weights in that folder score again); the base model and a
        reference arm are keyed by their stages."""
        if self.options.model is None:
            return ""
        return checkpoint_hash(self.resolve(self.options.model))

    def check(self) -> list[tuple[tuple, str]]:
        """The reference checkpoint, when named, is a model folder."""
        if self.options.model is None:
            return []
        from mixlab.models.loading import model_dir_problem

        path = self.resolve(self.options.model)
        if problem := model_dir_problem(path):
            return [(("model",), f"{path} {problem}: give a local llava-hf format checkpoint folder.")]
        return []

    def batches(self, processor: Any, samples: list[Sample]) -> list[list[int]]:
        """Index lists of `batch_size` neighbours in estimated-length order, the longest batch first: with batches
        run at once the last one may run alone, so it should be short, and a batch too large for memory fails at
        the start."""
        from mixlab.models.sample_scores import length_order

        order = length_order(processor, samples)
        size = self.options.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)][::-1]


def model_settings(model_dir: Path) -> dict[str, Any]:
    """Cache-key material for scores from a checkpoint: its content hash and the device kind (bf16 on CUDA, fp32 on
    CPU give slightly different numbers)."""
    from mixlab.models.loading import device_kind

    return {"model": checkpoint_hash(model_dir), "device": device_kind()}
