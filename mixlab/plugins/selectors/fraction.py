"""``fraction``: keep the lowest or highest share (or a threshold) of one score column, globally or per source."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from mixlab import hookimpl
from mixlab.components import Options, RunContext, Selection, Selector
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.hookspecs import Register
from mixlab.selection.budget import target_count
from mixlab.selection.strata import strata


class FractionOptions(Options):
    column: str = Field(description="The score column to rank by (a scorer's output, e.g. `ppl`).")
    keep: Literal["lowest", "highest"] = Field("lowest", description="Which end to keep.")
    fraction: float | None = Field(None, gt=0, le=1, description="Share to keep.")
    threshold: float | None = Field(None, description="Keep samples at or below (lowest) / above (highest) it.")
    per_source: bool = Field(False, description="Apply the fraction within each source separately.")

    @model_validator(mode="after")
    def _one_rule(self) -> FractionOptions:
        if (self.fraction is None) == (self.threshold is None):
            raise ValueError("give exactly one of `fraction` or `threshold`")
        return self


class FractionSelector(Selector):
    name = "fraction"
    Options = FractionOptions
    options: FractionOptions

    def select(self, samples: list[Sample], scores: dict[str, np.ndarray], ctx: RunContext) -> Selection:
        o = self.options
        if o.column not in scores:
            raise UserError(
                f"selector {self.label!r}: no score column {o.column!r}; the named scorers give "
                f"{', '.join(sorted(scores)) or 'none'}. Fix `column` or the selector's `scorers`."
            )
        values = np.asarray(scores[o.column], dtype=float)
        sign = 1.0 if o.keep == "lowest" else -1.0
        keep: list[int] = []
        for rows in strata(samples, o.per_source):
            idx = np.array(rows)
            v = sign * values[idx]
            if o.threshold is not None:
                keep += idx[v <= sign * o.threshold].tolist()
            else:
                assert o.fraction is not None  # FractionOptions requires exactly one of fraction and threshold
                k = target_count(len(idx), o.fraction)
                order = np.lexsort((idx, v))  # stable: ties broken by pool order
                keep += idx[order[:k]].tolist()
        kept = values[keep] if keep else np.array([])
        info = {
            "kept": len(keep),
            "column": o.column,
            "kept_range": [float(kept.min()), float(kept.max())] if len(kept) else None,
        }
        return Selection(ids=[samples[i]["id"] for i in sorted(keep)], info=info)


@hookimpl
def register_selectors(register: Register) -> None:
    register(FractionSelector)
