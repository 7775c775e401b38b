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
    """Write the toy world (LLaVA JSON sources + VLMEvalKit TSV benchmarks with known truth) to DIRECTORY.

    DIRECTORY is new or empty, or holds a toy world: the same parameters reuse it, others rewrite it, unless it also
    holds files the world did not write (then nothing is touched)."""
    from mixlab.errors import UserError
    from mixlab.toyworld import generate

    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file: give a folder to write the toy world to (new or empty).")
    blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(
            f"cannot write the toy world to {directory}: {blocker} is a file, not a folder. Give a DIRECTORY elsewhere."
        )
    if not 10 <= n_train <= 100_000 or not 4 <= n_bench <= 10_000:
        raise UserError(
            f"--n-train {n_train} / --n-bench {n_bench}: give --n-train from 10 to 100000 and --n-bench from 4 to "
            "10000 (a toy world is meant to be small)."
        )
    if not 0 <= seed < 2**32:
        raise UserError(f"--seed {seed} is out of range: give an integer from 0 to 2**32 - 1.")
    try:
        manifest = generate(directory, seed=seed, n_train=n_train, n_bench=n_bench)
    except OSError as e:
        raise UserError(
            f"cannot write the toy world to {directory} ({e.strerror}): choose a folder you can write."
        ) from None
    click.echo(f"{directory}: {len(manifest['sources'])} sources, {len(manifest['benchmarks'])} benchmarks")


@click.group()
def data() -> None:
    """Look at data before training on it."""


@data.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--source", "only", multiple=True, help="Only these sources (default: all).")
@click.option(
    "--preview",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="Samples per source shown with their label mask.",
)
@click.option("--image-root", type=click.Path(path_type=Path), help="Folder image paths are relative to (JSON files).")
def inspect(target: Path, only: tuple[str, ...], preview: int, image_root: Path | None) -> None:
    """Counts and image checks of a recipe's sources or of a LLaVA JSON file; for a recipe also token lengths and a
    label-mask preview under its model (its sources and model stage are loaded into its run folder, as `mixlab run`
    would; a JSON file's answer lengths are in words)."""
    from mixlab.inspect import inspect_target

    inspect_target(target, list(only), preview, image_root)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(toyworld)
    cli.add_command(data)
