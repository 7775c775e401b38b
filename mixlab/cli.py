"""The ``mixlab`` command line. Heavy libraries (torch, transformers) are imported only inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mixlab import __version__
from mixlab.errors import UserError


@click.group()
@click.version_option(__version__, prog_name="mixlab")
def cli() -> None:
    """mixlab: evaluate and select vision-language training data with declarative TOML recipes."""


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--output-dir", type=click.Path(path_type=Path), help="Run directory (overrides [run].output_dir).")
@click.option("--no-progress", is_flag=True, help="Do not draw progress bars.")
@click.option(
    "--fresh",
    "fresh",
    is_flag=False,
    flag_value="*",
    multiple=True,
    metavar="[STAGE]",
    help="Run stages again even if finished: alone, every stage; with a stage name or pattern (e.g. score:ppl, "
    "'train:*'; repeat or comma-separate for several), those stages and every stage that depends on them.",
)
def run(recipe: Path, output_dir: Path | None, no_progress: bool, fresh: tuple[str, ...]) -> None:
    """Run RECIPE; rerunning resumes, reusing every finished stage whose inputs (recipe section, upstream stages,
    plugin code) are unchanged."""
    from mixlab.pipeline import Run
    from mixlab.progress import quiet_libraries
    from mixlab.recipe import load_recipe
    from mixlab.run_folder import run_dir_problem

    if output_dir is not None and (problem := run_dir_problem(output_dir)):
        raise UserError(f"--output-dir {output_dir}: {problem}")
    loaded = load_recipe(recipe, own_output_dir=output_dir is None)
    quiet_libraries()
    patterns = tuple(p.strip() for value in fresh for p in value.split(",") if p.strip())
    check_fresh(patterns)
    runner = Run(loaded, output_dir, show_progress=not no_progress, fresh=patterns)
    runner.execute()
    warn_unmatched_fresh(patterns, [entry.name for entry in runner.engine.entries])
    click.echo(f"report: {runner.run_dir / 'report.json'}")


def warn_unmatched_fresh(patterns: tuple[str, ...], stages: list[str]) -> None:
    """A --fresh pattern of a known kind that named no stage of the run reran nothing: say so."""
    import fnmatch

    from mixlab.registry import did_you_mean

    for pattern in patterns:
        if pattern != "*" and not any(fnmatch.fnmatchcase(name, pattern) for name in stages):
            click.echo(
                f"warning: --fresh {pattern} matched no stage of this run, so it reran nothing."
                f"{did_you_mean(pattern, stages)} report.json lists the stages.",
                err=True,
            )


STAGE_KINDS = ("source", "model", "train", "eval", "score", "select", "merge")


def check_fresh(patterns: tuple[str, ...]) -> None:
    """Each --fresh pattern names a kind of stage (a typo would otherwise rerun nothing, silently)."""
    from mixlab.registry import did_you_mean

    for pattern in patterns:
        kind = pattern.split(":")[0]
        if pattern != "*" and not any(ch in kind for ch in "*?[") and kind not in STAGE_KINDS:
            raise UserError(
                f"--fresh {pattern}: no stage is named like that; stage names are <kind>:<name> with kind one of "
                f"{', '.join(STAGE_KINDS)} (report.json lists them).{did_you_mean(kind, STAGE_KINDS)}"
            )


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--no-path-checks",
    is_flag=True,
    help="Check the recipe itself but not the files and folders it names (a recipe written for another machine).",
)
def validate(recipe: Path, no_path_checks: bool) -> None:
    """Check RECIPE, the paths it names and its benchmark TSVs (training data is read by `run` and `data inspect`);
    report every problem at once (exit 2 if any)."""
    from mixlab.recipe import load_recipe

    loaded = load_recipe(recipe, check_paths=not no_path_checks)
    sections, arms = len(loaded.sources), len(loaded.arms)
    click.echo(f"{recipe}: ok ({sections} source section{'s' * (sections != 1)}, {arms} arm{'s' * (arms != 1)})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List every registered component and plugin command: kind, name, package and version."""
    from mixlab.registry import get_registry

    rows = get_registry().listing()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from mixlab.progress import console

    table = Table(title="mixlab plugins")
    for col in ("kind", "name", "package", "version"):
        table.add_column(col)
    for row in rows:
        table.add_row(*(row[col] for col in ("kind", "name", "package", "version")))
    console.file = sys.stdout
    console.print(table)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR's report.md, plots and tables from its report.json (nothing is retrained)."""
    from mixlab.progress import console
    from mixlab.report import render
    from mixlab.run_folder import read_report

    data = read_report(run_dir)
    console.stderr = False  # the tables are this command's output (stdout, so they pipe); `run` keeps stderr
    try:
        render(data, run_dir)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a report.json cut short or edited
        what = f"missing {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise UserError(
            f"{run_dir / 'report.json'}: incomplete or malformed report ({what}). Rerun `mixlab run` on the "
            "recipe to rewrite it (finished stages are reused)."
        ) from None
    finally:
        console.stderr = True
    click.echo(f"report: {run_dir / 'report.md'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("arm")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--image-root",
    type=click.Path(path_type=Path),
    help="Write image paths relative to this folder (default: absolute paths).",
)
def export(run_dir: Path, arm: str, out: Path, image_root: Path | None) -> None:
    """Write the samples ARM trains on in RUN_DIR to OUT as LLaVA JSON, for any trainer."""
    from mixlab.export import export_arm

    n = export_arm(run_dir, arm, out, image_root)
    click.echo(f"{out}: {n} samples of arm {arm!r}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("arm_a")
@click.argument("arm_b")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option(
    "--by-category",
    is_flag=True,
    help="Also compare on each benchmark category alone (MMBench's attribute_recognition, an lm-eval group's subtask).",
)
def compare(run_dir: Path, arm_a: str, arm_b: str, as_json: bool, by_category: bool) -> None:
    """ARM_A − ARM_B in RUN_DIR (an arm, or "soup"), paired by seed and item, with 95% intervals and, where these
    contain 0, the seeds that would decide it (nothing reruns)."""
    from mixlab.compare import compare_arms, verdict
    from mixlab.report_tables import fmt_ci, plan_cell
    from mixlab.stats import Comparison

    c, seeds, part, categories = compare_arms(run_dir, arm_a, arm_b, by_category)

    def fields(x: Comparison) -> dict:
        verdicts = {"delta": x.delta, "ci": x.ci, "p_better": x.p_better, "interval": x.interval, "verdict": verdict(x)}
        return verdicts | x.plan()

    if as_json:
        benchmarks = {name: fields(x) for name, x in c.benchmarks.items()}
        out = {"a": arm_a, "b": arm_b, "seeds": seeds, "part": part, "average": fields(c), "benchmarks": benchmarks}
        if by_category:
            out["categories"] = {name: fields(x) for name, x in categories.items()}
        click.echo(json.dumps(out, indent=2))
        return
    rows = {"average": c, **c.benchmarks, **categories}
    width = max(16, *(len(name) for name in rows))
    items = "the test part of each benchmark" if part == "test" else "every benchmark item"
    click.echo(f"{arm_a} − {arm_b}, seeds {seeds}, on {items}; interval: {c.interval}")
    click.echo(f"{'':<{width}} {'Δ':>8}  {'95% CI':<18} {'P(better)':>9}  {'verdict':<19}  seeds to decide")
    for name, x in rows.items():
        ci = fmt_ci(x.ci)
        p = "-" if x.p_better is None else f"{x.p_better:.2f}"
        click.echo(f"{name:<{width}} {x.delta:>+8.2f}  {ci:<18} {p:>9}  {verdict(x):<19}  {plan_cell([fields(x)])}")
    if categories:
        click.echo("Per category: each interval alone, so with many categories some exclude 0 by chance.")
    if len(seeds) == 1:
        click.echo("One seed: the interval covers the benchmark items only, not training noise.")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), default="recipe.toml")
def init(path: Path) -> None:
    """Write a starter recipe to PATH (default recipe.toml) that runs as it is on the toy world."""
    from mixlab.starter import write_starter

    write_starter(path)
    click.echo(f"{path}: written. Next: mixlab validate {path} && mixlab run {path}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def env(as_json: bool) -> None:
    """Versions, GPUs and plugins: paste this into a bug report."""
    from mixlab.envinfo import environment

    info = environment()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"python {info['python']} on {info['platform']}")
    for package, version in info["packages"].items():
        click.echo(f"{package:>14} {version}")
    click.echo(f"{'gpus':>14} {', '.join(info['gpus']) or 'none'}")
    for e in info["plugins"]:
        click.echo(f"{e['kind']:>14} {e['name']} ({e['package']} {e['version']})")
    if info["plugin_error"]:
        click.echo(f"{'plugins':>14} not loaded: {info['plugin_error']}")


def _add_plugin_commands() -> None:
    """Every plugin's commands; where the plugins cannot load (a broken package), the built-in ones alone, so that
    --help, --version, env and the built-in commands still work (a command that needs the plugins says why not)."""
    from mixlab.registry import get_registry

    try:
        registry = get_registry()
    except UserError:
        from mixlab.plugins import commands

        commands.register_commands(cli=cli)
        return
    registry.pm.hook.register_commands(cli=cli)


def main() -> None:
    """Entry point: user errors print one clear message and exit 2; internal errors exit 1."""
    from rich.markup import escape

    from mixlab.progress import console

    try:
        _add_plugin_commands()
        cli.main(standalone_mode=False)
    except UserError as exc:
        console.print("[bold red]Error:[/] " + escape(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("Interrupted: finished stages are kept; rerun the same command to resume.")
        sys.exit(130)


if __name__ == "__main__":
    main()
