"""One training or scoring job in a process of its own: ``python -m mixlab.worker JOB.json``.

Executors (mixlab/executors.py) write a job file per training (or scoring shard) the pipeline asks for and run this
module, alone or under ``torchrun`` for several processes, on this machine or on a cluster node. It runs the
recipe's trainer (or scorer) exactly as the pipeline does in-process and finishes the same content-addressed folder,
so results and caching do not depend on where a job ran. Only rank 0 writes.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixlab.errors import UserError
from mixlab.store import Store, atomic_write_json, content_hash, load_samples

JOB_FILE = "job.json"
ERROR_FILE = "worker-error.json"


def train_result(trainer: Any, samples: list, base_model: Path, stage_dir: Path, ctx: Any, overrides: Any) -> dict:
    """Train and describe the result as a training stage's result.json does (shared by the pipeline and workers)."""
    result = trainer.train(samples, base_model, stage_dir, ctx, overrides)
    ctx.record(**{k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))})
    return {"model_dir": str(Path(result.model_dir).relative_to(stage_dir)), "stats": result.stats}


def score_columns(section: Any, samples: list, reference_dir: Path | None, ctx: Any) -> dict[str, Any]:
    """Run a scorer section on samples, with an arm's model as its reference if given; columns checked for length."""
    scorer = section.build()
    if reference_dir is not None:
        if "model" not in type(scorer.options).model_fields:
            raise UserError(f"scorer {section.label!r} ({section.type}) has no model option: drop reference_arm.")
        scorer.options = scorer.options.model_copy(update={"model": str(reference_dir)})
    columns = scorer.score(samples, ctx)
    for col, values in columns.items():
        if len(values) != len(samples):
            raise RuntimeError(
                f"scorer {section.type!r} returned {len(values)} rows for column {col!r}, expected {len(samples)}"
            )
    return columns


class WorkerContext:
    """The RunContext a worker offers a trainer: no nested training or evaluation, progress as log lines."""

    def __init__(self, run_dir: Path, seed: int, base_model: Path, code: str):
        self.run_dir, self.seed, self._base_model, self._code = run_dir, seed, base_model, code
        self.records: dict[str, Any] = {}

    @property
    def base_model(self) -> Path:
        return self._base_model

    def train(self, samples: list, tag: str) -> Path:
        raise RuntimeError("a training job cannot start other trainings")

    def evaluate(self, model_dir: Path, tag: str) -> Any:
        raise RuntimeError("a training job cannot run evaluations")

    def aggregate(self, metrics: Any) -> float:
        from mixlab.pipeline import aggregate

        return aggregate(metrics)

    @contextmanager
    def progress(self, description: str, total: int | None):
        state = {"done": 0, "said": 0.0}

        def advance(n: int = 1, completed: int | None = None) -> None:
            state["done"] = completed if completed is not None else state["done"] + n
            if time.monotonic() - state["said"] > 30:  # a line every 30 s in the worker's log
                state["said"] = time.monotonic()
                self.log(f"{description}: {state['done']}/{total or '?'}")

        yield advance

    def cache_dir(self, kind: str, key: Any) -> Path:
        return Store(self.run_dir).cache_dir(kind, content_hash({"key": key, "code": self._code}))

    def record(self, **info: Any) -> None:
        self.records.update(info)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def run_job(job_file: Path) -> None:
    """Run the job described by job_file; rank 0 finishes its folder (or writes worker-error.json)."""
    job = json.loads(Path(job_file).read_text())
    stage_dir = Path(job["stage_dir"])
    rank = int(os.environ.get("RANK", "0"))
    start = time.perf_counter()
    try:
        from mixlab import registry
        from mixlab.progress import quiet_libraries
        from mixlab.recipe import load_recipe

        for module in job.get("plugins", []):
            registry.register_plugin(importlib.import_module(module))
        quiet_libraries()
        recipe = load_recipe(Path(job["recipe"]))
        ctx = WorkerContext(Path(job["run_dir"]), job["seed"], Path(job["base_model"]), job["code"])
        samples = load_samples(stage_dir / job["samples"])
        if job.get("kind") == "score":
            import numpy as np

            reference = Path(job["reference"]) if job.get("reference") else None
            columns = score_columns(recipe.scorers[job["scorer"]], samples, reference, ctx)
            np.savez(stage_dir / "scores.npz", **columns)
            result = {"columns": sorted(columns)}
        else:
            trainer = recipe.trainer.build()
            result = train_result(trainer, samples, Path(job["base_model"]), stage_dir, ctx, job.get("overrides"))
    except BaseException as exc:
        if rank == 0:
            atomic_write_json(
                stage_dir / ERROR_FILE,
                {"user_error": isinstance(exc, UserError), "message": str(exc), "traceback": traceback.format_exc()},
            )
        raise
    if rank == 0:
        result["_record"] = ctx.records
        result["_seconds"] = round(time.perf_counter() - start, 3)
        Store.finish(stage_dir, result)


def main() -> None:
    try:
        run_job(Path(sys.argv[1]))
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
