"""``vlmevalkit``: a user's VLMEvalKit checkout run in a subprocess on the saved checkpoint, its results read back.

VLMEvalKit is not on PyPI and has import-time side effects (it turns off SSL verification, reads a ``.env``), so it
runs out of process: mixlab writes a ``--config`` JSON whose model entry points a VLMEvalKit model class at the
checkpoint, runs ``run.py`` with a work dir inside the evaluation stage, and reads the score files VLMEvalKit writes
(``<model>_<dataset>_acc.csv`` for multiple choice, ``<model>_<dataset>_score.csv`` for yes/no and MME).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from mixlab import hookimpl
from mixlab.components import Evaluator, Metrics, Options, RunContext
from mixlab.errors import UserError
from mixlab.hookspecs import Register

MODEL_NAME = "mixlab_checkpoint"
INSTALL = (
    "git clone https://github.com/open-compass/VLMEvalKit && pip install -e VLMEvalKit "
    "(in this environment or the one `python` names), then set `checkout` to that folder"
)


class VLMEvalKitOptions(Options):
    checkout: str = Field(description="The VLMEvalKit checkout (the folder holding run.py), relative to the recipe.")
    datasets: list[str] = Field(min_length=1, description="VLMEvalKit dataset names, e.g. MME, MMBench_DEV_EN.")
    model_class: str = Field(
        "LLaVA_Next", description="VLMEvalKit model class for the checkpoint (LLaVA_Next loads llava-hf checkpoints)."
    )
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments of that class.")
    python: str | None = Field(None, description="Python of VLMEvalKit's environment; default: mixlab's own.")
    args: list[str] = Field(
        default_factory=list, description='Extra run.py arguments, e.g. ["--judge", "exact_matching"].'
    )


def write_config(path: Path, model_dir: Path, options: VLMEvalKitOptions) -> dict[str, Any]:
    """The run.py --config JSON: one model (the checkpoint) and each dataset under its own name."""
    config = {
        "model": {MODEL_NAME: {"class": options.model_class, "model_path": str(model_dir), **options.model_kwargs}},
        "data": {name: {} for name in options.datasets},
    }
    path.write_text(json.dumps(config, indent=2))
    return config


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dataset_metrics(work_dir: Path, dataset: str) -> dict[str, float]:
    """One dataset's metrics from the newest score file VLMEvalKit wrote under work_dir, with a 0-100 ``score``.

    MME (perception + reasoning, points): score = total / 2800 × 100, as the built-in MME rule. Multiple choice
    (``_acc.csv``, hit rates 0-1 per split): the first split's columns × 100, score = Overall. Other yes/no
    (``_score.csv``, already in %): score = Overall."""
    found = sorted(
        (p for suffix in ("acc", "score") for p in work_dir.rglob(f"{MODEL_NAME}_{dataset}_{suffix}.csv")),
        key=lambda p: p.stat().st_mtime,
    )
    if not found:
        raise UserError(
            f"VLMEvalKit wrote no score file for {dataset} under {work_dir} "
            f"(expected {MODEL_NAME}_{dataset}_acc.csv or _score.csv). Check the dataset name and its log."
        )
    path = found[-1]
    rows = read_csv(path)
    if not rows:
        raise UserError(f"{path} is empty.")
    row = rows[0]
    values = {k: v for k, v in ((k, _number(v)) for k, v in row.items() if k != "split") if v is not None}
    if "perception" in values and "reasoning" in values:
        total = values["perception"] + values["reasoning"]
        return {**values, "total": total, "score": 100.0 * total / 2800}
    if "Overall" not in values:
        raise UserError(f"{path}: no Overall column (columns: {', '.join(row)}); mixlab cannot score it.")
    if path.name.endswith("_acc.csv"):
        values = {k: 100.0 * v for k, v in values.items()}
    return {**values, "score": values["Overall"]}


class VLMEvalKit(Evaluator):
    name = "vlmevalkit"
    Options = VLMEvalKitOptions
    options: VLMEvalKitOptions
    path_options = frozenset({"checkout", "python"})

    def run_py(self) -> Path:
        checkout = self.resolve(self.options.checkout)
        run_py = checkout / "run.py"
        if not run_py.is_file():
            raise UserError(f"evaluator {self.label!r}: no VLMEvalKit checkout at {checkout} (no run.py). {INSTALL}.")
        return run_py

    def interpreter(self) -> str:
        """VLMEvalKit's python: a path (relative to the recipe), or a command found on PATH; mixlab's own by
        default."""
        python = self.options.python
        if python is None:
            return sys.executable
        return str(self.resolve(python)) if "/" in python else python

    def evaluate(self, model_dir: Path, work_dir: Path, ctx: RunContext) -> Metrics:
        run_py = self.run_py()
        out = work_dir / "vlmevalkit"
        out.mkdir(parents=True, exist_ok=True)
        config = out / "config.json"
        write_config(config, Path(model_dir).resolve(), self.options)
        command = [self.interpreter(), str(run_py), "--config", str(config)]
        command += ["--work-dir", str(out), *self.options.args]
        log = out / "run.log"
        ctx.log(f"vlmevalkit: {' '.join(command)} (log: {log})")
        with open(log, "w") as f:
            code = subprocess.call(command, cwd=run_py.parent, stdout=f, stderr=subprocess.STDOUT)
        if code:
            tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
            raise UserError(
                f"evaluator {self.label!r}: VLMEvalKit exited with code {code}; see {log}. Last lines:\n{tail}"
            )
        return {f"vlmevalkit/{name}": dataset_metrics(out, name) for name in self.options.datasets}

    def check(self) -> list[tuple[tuple, str]]:
        import shutil

        problems = []
        if not (self.resolve(self.options.checkout) / "run.py").is_file():
            checkout = self.resolve(self.options.checkout)
            problems.append((("checkout",), f"no VLMEvalKit checkout at {checkout} (no run.py): {INSTALL}."))
        python = self.options.python
        if python is not None and not (self.resolve(python).is_file() if "/" in python else shutil.which(python)):
            problems.append((("python",), f"Python {python!r} not found: give the path of VLMEvalKit's python."))
        return problems


@hookimpl
def register_evaluators(register: Register) -> None:
    register(VLMEvalKit)
