"""One training job in a process of its own: ``python -m mixlab.worker JOB.json``.

Executors (mixlab/executors.py) write a job file per training the pipeline asks for and run this module, alone or
under ``accelerate launch`` for several processes, on this machine or on a cluster node. It runs the recipe's trainer
exactly as the pipeline does in-process and finishes the same content-addressed stage folder, so results and caching
do not depend on where a training ran. Only rank 0 writes.
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
    """Run the training described by job_file; rank 0 finishes its stage folder (or writes worker-error.json)."""
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
        result = train_result(
            recipe.trainer.build(), samples, Path(job["base_model"]), stage_dir, ctx, job.get("overrides")
        )
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
