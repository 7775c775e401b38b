"""Which toy world a source or an evaluator uses: its parameters, its folder, and generating it once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mixlab.components import Options, Seed
from mixlab.paths import expand_user

if TYPE_CHECKING:
    from mixlab.components import RunContext


class ToyWorldParams(Options):
    """Which toy world: the same parameters give the same files (generated once, then reused)."""

    seed: Seed = Field(0, description="World seed (independent of the run's seed).")
    n_train: int = Field(400, ge=10, description="Samples per training source.")
    n_bench: int = Field(60, ge=4, description="Questions per benchmark category.")
    image_size: int = Field(64, ge=32, le=1024, description="Image side in pixels.")
    dir: str | None = Field(
        None, description="Where to write it, relative to the recipe (default: <run dir>/toyworld/<params>)."
    )

    def own_dir(self, base_dir: Path) -> Path | None:
        """`dir` as a folder: relative to ``base_dir`` (the recipe's folder), like every path in a recipe."""
        if not self.dir:
            return None
        path = expand_user(self.dir)
        return (path if path.is_absolute() else base_dir / path).resolve()

    def folder(self, ctx: RunContext, base_dir: Path) -> Path:
        own = self.own_dir(base_dir)
        if own is not None:
            return own
        return ctx.run_dir / "toyworld" / f"s{self.seed}-t{self.n_train}-b{self.n_bench}-i{self.image_size}"

    def dir_problem(self, base_dir: Path) -> str | None:
        """What keeps mixlab from writing the world to `dir` (a file in the way, no permission, files that are not
        a toy world's), or None."""
        from mixlab.store import folder_problem
        from mixlab.toyworld.world import replace_problem, reusable

        own = self.own_dir(base_dir)
        if own is None:
            return None
        if problem := folder_problem(own, "the toy world's folder"):
            return problem
        if reusable(own, self.seed, self.n_train, self.n_bench, self.image_size) is not None:
            return None
        problem = replace_problem(own)
        return f"{problem}." if problem else None

    def ensure(self, ctx: RunContext, base_dir: Path) -> dict[str, Any]:
        """Generate (or reuse) the world; the manifest gets its folder under ``_dir``."""
        from mixlab.toyworld import generate

        folder = self.folder(ctx, base_dir)
        manifest = generate(
            folder, seed=self.seed, n_train=self.n_train, n_bench=self.n_bench, image_size=self.image_size
        )
        return {**manifest, "_dir": str(folder)}
