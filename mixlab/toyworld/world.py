"""generate(): build the whole toy world (training sources, benchmarks, corpus, manifest), cached and atomic."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from mixlab.components import MAX_SEED
from mixlab.errors import UserError
from mixlab.store import tree_digest
from mixlab.toyworld.benchmarks import BUILDERS
from mixlab.toyworld.sources import SOURCES, build_source
from mixlab.toyworld.writer import atomic_dir, write_json, write_lines, write_tsv

GENERATOR_VERSION = "3"
WORLD_ENTRIES = ("bench", "corpus.txt", "images", "manifest.json", "train")
"""What a toy world writes at the top of its folder: anything else there is someone's, and is never replaced."""
CATEGORIES = ("caption", "color", "shape", "count", "spatial", "ocr", "chart", "science", "text")


@functools.cache
def generator_code() -> str:
    """A hash of the generator's source files: a world on disk is rebuilt after an edit of the generator, even one
    that forgets to bump GENERATOR_VERSION."""
    return tree_digest(Path(__file__).parent)


def _check(seed: int, n_train: int, n_bench: int, image_size: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"toy world seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    if n_train < 10:
        raise UserError(f"toy world n_train must be at least 10, got {n_train}")
    if n_bench < 4:
        raise UserError(f"toy world n_bench must be at least 4, got {n_bench}")
    if not 32 <= image_size <= 1024:
        raise UserError(f"toy world image_size must be between 32 and 1024 pixels, got {image_size}")


def load_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a finished world in out_dir, or None when there is none (or it is unreadable)."""
    try:
        manifest = json.loads((Path(out_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _params(seed: int, n_train: int, n_bench: int, image_size: int) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "generator_code": generator_code(),
        "seed": seed,
        "n_train": n_train,
        "n_bench": n_bench,
        "image_size": image_size,
    }


def reusable(out_dir: Path, seed: int, n_train: int, n_bench: int, image_size: int) -> dict[str, Any] | None:
    """The manifest of the world in out_dir when it was built with these parameters (and this generator), else
    None."""
    existing = load_manifest(out_dir)
    params = _params(seed, n_train, n_bench, image_size)
    return existing if existing is not None and all(existing.get(k) == v for k, v in params.items()) else None


def replace_problem(out_dir: Path) -> str | None:
    """Why a new toy world may not be written to out_dir (it holds files that are not a toy world's), or None."""
    try:
        names = sorted(p.name for p in Path(out_dir).iterdir()) if Path(out_dir).is_dir() else []
    except OSError:
        return None  # an unreadable folder: writing to it reports the error
    if not names:
        return None
    if load_manifest(out_dir) is None:
        return f"{out_dir} is not empty and holds no toy world (no manifest.json): choose an empty or new folder"
    foreign = [name for name in names if name not in WORLD_ENTRIES]
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return (
            f"{out_dir} holds a toy world of other parameters (or of an older mixlab) and other files too "
            f"({listed}): writing this world there would delete them. Move them out, or choose another folder"
        )
    return None


def generate(out_dir: Path, seed: int = 0, n_train: int = 400, n_bench: int = 60, image_size: int = 64) -> dict:
    """Write the toy world into out_dir and return its manifest; reuse it when already built with these parameters.

    The world is built in a temp folder beside out_dir and renamed into place at the end. A folder that holds
    anything but a toy world is never replaced.
    """
    _check(seed, n_train, n_bench, image_size)
    out_dir = Path(out_dir)
    if (existing := reusable(out_dir, seed, n_train, n_bench, image_size)) is not None:
        return existing
    if problem := replace_problem(out_dir):
        raise UserError(problem + ".")
    params = _params(seed, n_train, n_bench, image_size)
    with atomic_dir(out_dir) as tmp:
        manifest = _build(tmp, params)
    return manifest


def _build(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    seed, n_train, n_bench, size = params["seed"], params["n_train"], params["n_bench"], params["image_size"]
    corpus: list[str] = []
    sources: dict[str, Any] = {}
    for spec in SOURCES:
        records = build_source(spec, seed, n_train, size, root / "images")
        write_json(records, root / "train" / f"{spec.name}.json")
        corpus += [turn["value"] for rec in records for turn in rec["conversations"]]
        sources[spec.name] = {
            "json": f"train/{spec.name}.json",
            "image_root": "images",
            "category": spec.category,
            "quality": spec.quality,
            "n": len(records),
            "noise_rate": spec.noise_rate,
            "description": spec.description,
        }
        if spec.n_unique:
            sources[spec.name]["n_unique"] = min(spec.n_unique, n_train)
        if spec.near_dup:
            sources[spec.name]["near_dup"] = spec.near_dup

    benchmarks: dict[str, Any] = {}
    for builder in BUILDERS:
        bench = builder(seed, n_bench, size)
        write_tsv(bench.rows, bench.columns, root / "bench" / f"{bench.name}.tsv")
        for row in bench.rows:
            corpus += [str(row.get(c) or "") for c in ("question", "hint", "A", "B", "C", "D", "answer")]
        benchmarks[bench.name] = {
            "tsv": f"bench/{bench.name}.tsv",
            "kind": bench.kind,
            "n_rows": len(bench.rows),
            "n_questions": bench.n_questions,
            "categories": bench.categories,
        }

    write_lines(corpus, root / "corpus.txt")
    manifest = {
        **params,
        "sources": sources,
        "benchmarks": benchmarks,
        "categories": list(CATEGORIES),
        "corpus": "corpus.txt",
    }
    write_json(manifest, root / "manifest.json")
    return manifest
