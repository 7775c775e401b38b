"""``coincide``: COINCIDE (EMNLP 2024) cluster-then-prototype selection on an embedding column.

The math lives in ``mixlab.selection.coincide``; docs/coincide.md gives the formulas and defaults. Rows are
taken as given: the scorer that made the embeddings decides how text-only samples are embedded.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from mixlab import hookimpl
from mixlab.components import Options, RunContext, Seed, Selection, Selector
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.hookspecs import Register
from mixlab.selection import coincide


class CoincideOptions(Options):
    column: str = Field(
        "embedding", description="The 2-D embedding column (one row per sample), e.g. from the `activations` scorer."
    )
    fraction: float = Field(0.2, gt=0, le=1, description="Share of the pool to keep (paper: 0.2).")
    k: int | None = Field(
        None,
        ge=1,
        description="Number of clusters; default round(n / 66), the paper's ~66 samples per cluster "
        "(10,000 clusters for LLaVA-665K). Clipped to n.",
    )
    niter: int = Field(50, ge=1, description="Spherical k-means iterations (official: 50).")
    seed: Seed = Field(1234, description="faiss k-means seed (official: 1234; not the run seed).")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature of the cluster budgets (official: 0.1).")
    sigma: float = Field(1.0, gt=0, description="Gaussian kernel width for density and MMD (official: 1.0).")
    layout_blocks: int | None = Field(
        None,
        ge=1,
        description="Number of equal [image, text] layer blocks in the embedding (5 in the paper). When given, "
        "transferability uses only the text half of each block, as the official code does; default: the whole vector.",
    )
    text_slices: list[tuple[int, int]] | None = Field(
        None,
        description="Explicit [start, stop) column ranges for transferability, instead of `layout_blocks`.",
    )

    @model_validator(mode="after")
    def _one_layout(self) -> CoincideOptions:
        if self.layout_blocks is not None and self.text_slices is not None:
            raise ValueError("give at most one of `layout_blocks` or `text_slices`")
        bad = next(((a, b) for a, b in self.text_slices or [] if not 0 <= a < b), None)
        if bad is not None:
            raise ValueError(
                f"text_slices: [{bad[0]}, {bad[1]}] is not a column range: give [start, stop) with 0 <= start < stop"
            )
        return self


class CoincideSelector(Selector):
    name = "coincide"
    Options = CoincideOptions
    options: CoincideOptions

    def select(self, samples: list[Sample], scores: dict[str, np.ndarray], ctx: RunContext) -> Selection:
        o = self.options
        where = f"selector {self.label!r}"
        if o.column not in scores:
            raise UserError(
                f"{where}: no score column {o.column!r}; the named scorers give "
                f"{', '.join(sorted(scores)) or 'none'}. Fix `column` or the selector's `scorers` "
                "(COINCIDE needs an embedding scorer such as `activations`)."
            )
        x = np.asarray(scores[o.column])
        if x.ndim != 2:
            raise UserError(
                f"{where}: column {o.column!r} has shape {x.shape}, but COINCIDE needs a 2-D embedding "
                "(one row per sample). Point `column` at an embedding scorer's output."
            )
        if len(x) != len(samples):
            raise UserError(f"{where}: column {o.column!r} has {len(x)} rows for {len(samples)} samples.")
        if not np.issubdtype(x.dtype, np.number):
            raise UserError(f"{where}: column {o.column!r} is not numeric ({x.dtype}).")
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        if bad:
            raise UserError(f"{where}: {bad} rows of {o.column!r} hold NaN or inf; fix the embedding scorer.")
        try:
            slices = coincide.layout_text_slices(x.shape[1], o.layout_blocks) if o.layout_blocks else o.text_slices
            coincide.slice_columns(x.shape[1], slices)
        except ValueError as e:
            raise UserError(f"{where}: {e}; fix `layout_blocks` or `text_slices`.") from e

        k = min(len(x), o.k if o.k is not None else coincide.default_k(len(x)))
        coincide.prefer_native_blas()
        if hint := coincide.faiss_blas_hint():
            ctx.log(f"{where}: {hint}")
        try:
            with ctx.progress("coincide: clusters", 2 * k) as advance:
                rows, info = coincide.select(
                    x, o.fraction, k, o.niter, o.seed, o.temperature, o.sigma, slices, advance=advance
                )
        except ValueError as e:  # k-means collapse and the like: a data problem the user must look at
            raise UserError(f"{where}: {e}") from e
        info["column"] = o.column
        return Selection(ids=[samples[i]["id"] for i in rows], info=info)


@hookimpl
def register_selectors(register: Register) -> None:
    register(CoincideSelector)
