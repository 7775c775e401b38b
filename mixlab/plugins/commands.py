"""Built-in commands added through ``register_commands``: ``mixlab toyworld`` and ``mixlab data inspect``."""

from __future__ import annotations

from pathlib import Path

import click

from mixlab import hookimpl


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="World seed.")
@click.option("--n-train", default=400, show_default=True, help="Samples per training source.")
@click.option("--n-bench", default=60, show_default=True, help="Questions per benchmark category.")
def toyworld(directory: Path, seed: int, n_train: int, n_bench: int) -> None:
    """Write the toy world (LLaVA JSON sources + VLMEvalKit TSV benchmarks with known truth) to DIRECTORY."""
    from mixlab.toyworld import generate

    manifest = generate(directory, seed=seed, n_train=n_train, n_bench=n_bench)
    click.echo(f"{directory}: {len(manifest['sources'])} sources, {len(manifest['benchmarks'])} benchmarks")


@click.group()
def data() -> None:
    """Look at data before training on it."""


@data.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--source", "only", multiple=True, help="Only these sources (default: all).")
@click.option("--preview", default=2, show_default=True, help="Samples per source shown with their label mask.")
@click.option("--image-root", type=click.Path(path_type=Path), help="Folder image paths are relative to (JSON files).")
def inspect(target: Path, only: tuple[str, ...], preview: int, image_root: Path | None) -> None:
    """Counts, image checks, token lengths and a label-mask preview for a recipe's sources or a LLaVA JSON file."""
    from mixlab.inspect import inspect_target

    inspect_target(target, list(only), preview, image_root)


@hookimpl
def register_commands(cli):
    cli.add_command(toyworld)
    cli.add_command(data)
