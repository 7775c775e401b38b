"""``toyworld``: the embedded default data, a generated world with known truth, read through the LLaVA JSON path."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import RunContext, Source
from mixlab.data import Sample
from mixlab.errors import UserError
from mixlab.hookspecs import Register
from mixlab.records import collect, read_records
from mixlab.registry import did_you_mean
from mixlab.toyworld.params import ToyWorldParams


def all_source_names() -> list[str]:
    from mixlab.toyworld.sources import SOURCES

    return [spec.name for spec in SOURCES]


class ToyWorldOptions(ToyWorldParams):
    sources: list[str] | None = Field(None, description="Toy sources to provide (default: all of them).")


class ToyWorld(Source):
    """Provides each toy-world source (e.g. ``color_clean``, ``color_noisy``) under its own name."""

    name = "toyworld"
    Options = ToyWorldOptions
    path_options = frozenset({"dir"})
    options: ToyWorldOptions

    def provides(self) -> list[str]:
        known = all_source_names()
        wanted = self.options.sources or known
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise UserError(f"[sources.{self.label}]: unknown toy-world sources {unknown}; known: {', '.join(known)}.")
        return list(wanted)

    def check(self) -> list[tuple[tuple, str]]:
        known = all_source_names()
        problems: list[tuple[tuple, str]] = []
        wanted = self.options.sources
        if wanted is not None and not wanted:
            problems.append((("sources",), "is empty: name the toy sources to provide, or drop `sources` for all."))
        names = wanted or []
        for i, name in enumerate(names):
            if name not in known:
                problems.append((("sources", i), f"no toy-world source named {name!r}.{did_you_mean(name, known)}"))
            elif name in names[:i]:
                problems.append((("sources", i), f"lists {name!r} twice: name each toy source once."))
        if found := self.options.dir_problem(self.base_dir):
            problems.append((("dir",), found))
        return problems

    def categories(self) -> dict[str, str]:
        """Each provided source's category, known without generating the world."""
        from mixlab.toyworld.sources import SOURCES

        return {spec.name: spec.category for spec in SOURCES}

    def fingerprint(self) -> str:
        from mixlab.toyworld.world import GENERATOR_VERSION

        return f"toyworld-v{GENERATOR_VERSION}"

    def load(self, ctx: RunContext) -> list[Sample]:
        manifest = self.options.ensure(ctx, self.base_dir)
        root = Path(manifest["_dir"])
        samples: list[Sample] = []
        for name in self.provides():
            entry = manifest["sources"][name]
            path = root / entry["json"]
            found, _ = collect(read_records(path), path, root / entry["image_root"], "exists", "raise", name)
            samples += [{**s, "quality": entry["quality"]} for s in found]
        return samples


@hookimpl
def register_sources(register: Register) -> None:
    register(ToyWorld)
