"""``random``: a uniform random subset, the baseline every selection table needs."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from mixlab import hookimpl
from mixlab.components import Options, RunContext, Seed, Selection, Selector
from mixlab.data import Sample
from mixlab.hookspecs import Register
from mixlab.selection.budget import target_count
from mixlab.selection.strata import strata


class RandomOptions(Options):
    fraction: float | None = Field(None, gt=0, le=1, description="Share of the pool to keep.")
    count: int | None = Field(None, ge=1, description="Number of samples to keep (instead of fraction).")
    per_source: bool = Field(False, description="Keep the same share of every source (stratified).")
    seed: Seed | None = Field(None, description="Sampling seed (default: the run's seed).")

    @model_validator(mode="after")
    def _one_budget(self) -> RandomOptions:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of `fraction` or `count`")
        return self


def budget(n: int, fraction: float | None, count: int | None) -> int:
    """How many to keep out of n."""
    return min(n, count) if count is not None else target_count(n, fraction or 0)


class RandomSelector(Selector):
    name = "random"
    Options = RandomOptions
    uses_seed = True  # without a seed of its own
    options: RandomOptions

    def select(self, samples: list[Sample], scores: dict[str, np.ndarray], ctx: RunContext) -> Selection:
        o = self.options
        rng = np.random.default_rng(ctx.seed if o.seed is None else o.seed)
        share = budget(len(samples), o.fraction, o.count) / max(1, len(samples))
        keep: list[int] = []
        for rows in strata(samples, o.per_source):
            keep += rng.choice(rows, size=budget(len(rows), share, None), replace=False).tolist()
        return Selection(ids=[samples[i]["id"] for i in sorted(keep)], info={"kept": len(keep)})


@hookimpl
def register_selectors(register: Register) -> None:
    register(RandomSelector)
