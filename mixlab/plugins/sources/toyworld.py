"""``toyworld``: the embedded default data, a generated world with known truth, read through the LLaVA JSON path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Options, Source
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.plugins.sources.llava_json import read_records
from mixlab.plugins.sources.records import collect


class ToyWorldParams(Options):
    """Which toy world: the same parameters give the same files (generated once, then reused)."""

    seed: int = Field(0, ge=0, description="World seed (independent of the run's seed).")
    n_train: int = Field(400, ge=10, description="Samples per training source.")
    n_bench: int = Field(60, ge=4, description="Questions per benchmark category.")
    image_size: int = Field(64, ge=32, le=1024, description="Image side in pixels.")
    dir: str | None = Field(None, description="Where to write it (default: <run dir>/toyworld/<params>).")

    def folder(self, ctx: Any) -> Path:
        if self.dir:
            return Path(self.dir).expanduser().resolve()
        return ctx.run_dir / "toyworld" / f"s{self.seed}-t{self.n_train}-b{self.n_bench}-i{self.image_size}"

    def ensure(self, ctx: Any) -> dict[str, Any]:
        """Generate (or reuse) the world; the manifest gets its folder under ``_dir``."""
        from mixlab.toyworld import generate

        folder = self.folder(ctx)
        manifest = generate(
            folder, seed=self.seed, n_train=self.n_train, n_bench=self.n_bench, image_size=self.image_size
        )
        return {**manifest, "_dir": str(folder)}


def all_source_names() -> list[str]:
    from mixlab.toyworld.sources import SOURCES

    return [spec.name for spec in SOURCES]


class ToyWorldOptions(ToyWorldParams):
    sources: list[str] | None = Field(None, description="Toy sources to provide (default: all of them).")


class ToyWorld(Source):
    """Provides each toy-world source (e.g. ``color_clean``, ``color_noisy``) under its own name."""

    name = "toyworld"
    Options = ToyWorldOptions

    def provides(self) -> list[str]:
        known = all_source_names()
        wanted = self.options.sources or known
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise UserError(f"[sources.{self.label}]: unknown toy-world sources {unknown}; known: {', '.join(known)}.")
        return list(wanted)

    def fingerprint(self) -> str:
        from mixlab.toyworld.world import GENERATOR_VERSION

        return f"toyworld-v{GENERATOR_VERSION}"

    def load(self, ctx) -> list[Sample]:
        manifest = self.options.ensure(ctx)
        root = Path(manifest["_dir"])
        samples: list[Sample] = []
        for name in self.provides():
            entry = manifest["sources"][name]
            path = root / entry["json"]
            found, _ = collect(read_records(path), path, root / entry["image_root"], "exists", "raise", name)
            samples += [{**s, "quality": entry["quality"]} for s in found]
        return samples


@hookimpl
def register_sources(register):
    register(ToyWorld)
