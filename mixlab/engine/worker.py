"""One training or scoring job in a process of its own: ``python -m mixlab.engine.worker JOB.json``.

Executors (mixlab.engine.dispatch) run this module, alone or under ``torchrun`` for several processes, on this
machine or on a cluster node. It runs the recipe's trainer (or scorer) through the same stage bodies as the
pipeline and finishes the same content-addressed folder, so results and caching do not depend on where a job ran.
Only rank 0 writes.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mixlab.components import Metrics, Trial
from mixlab.engine.bodies import SCORES_FILE, save_scores, score_body, train_body
from mixlab.engine.jobs import SAMPLES_FILE, JobSpec, read_job, write_error
from mixlab.engine.keys import cache_key
from mixlab.engine.stages import RECORD, SECONDS
from mixlab.errors import UserError
from mixlab.metrics import aggregate
from mixlab.store import Store, load_samples

if TYPE_CHECKING:
    from mixlab.data import Sample
    from mixlab.stats import Comparison


class WorkerContext:
    """The RunContext a worker offers a trainer or scorer: no nested training or evaluation, progress as log lines."""

    def __init__(self, spec: JobSpec):
        self.run_dir = Path(spec.run_dir)
        self.seed = spec.seed
        self._base_model = Path(spec.base_model)
        self.records: dict[str, Any] = {}

    @property
    def base_model(self) -> Path:
        return self._base_model

    def train(self, samples: list[Sample], tag: str, overrides: dict[str, Any] | None = None) -> Path:
        raise RuntimeError("a worker job cannot start other trainings")

    def train_many(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Path]:
        raise RuntimeError("a worker job cannot start other trainings")

    def evaluate(self, model_dir: Path, tag: str) -> Metrics:
        raise RuntimeError("a worker job cannot run evaluations")

    def aggregate(self, metrics: Metrics) -> float:
        return aggregate(metrics)

    def trials(self, jobs: list[tuple[list[Sample], str]], overrides: dict[str, Any] | None = None) -> list[Trial]:
        raise RuntimeError("a worker job cannot start other trainings")

    def compare(self, a: Trial, b: Trial) -> Comparison:
        raise RuntimeError("a worker job cannot compare trainings")

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        done, said = [0], [0.0]

        def advance(n: int = 1, *, completed: int | None = None) -> None:
            done[0] = completed if completed is not None else done[0] + n
            if time.monotonic() - said[0] > 30:  # a line every 30 s in the worker's log
                said[0] = time.monotonic()
                self.log(f"{description}: {done[0]}/{total or '?'}")

        yield advance

    def cache_dir(self, kind: str, key: Any) -> Path:
        return Store(self.run_dir).cache_dir(kind, cache_key(key))

    def record(self, **info: Any) -> None:
        self.records.update(info)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def run_job(job_file: Path) -> None:
    """Run the job described by job_file; rank 0 finishes its folder (or writes worker-error.json)."""
    spec = read_job(job_file)
    stage_dir = Path(spec.stage_dir)
    rank = int(os.environ.get("RANK", "0"))
    start = time.perf_counter()
    try:
        from mixlab import registry
        from mixlab.progress import quiet_libraries
        from mixlab.recipe import load_recipe

        for module in spec.plugins:
            registry.register_plugin(importlib.import_module(module))
        quiet_libraries()
        recipe = load_recipe(Path(spec.recipe), check_paths=False)
        ctx = WorkerContext(spec)
        samples = load_samples(stage_dir / SAMPLES_FILE)
        if spec.kind == "score":
            assert spec.scorer is not None
            reference = Path(spec.reference) if spec.reference else None
            columns = score_body(recipe.scorers[spec.scorer], samples, reference, ctx)
            save_scores(stage_dir / SCORES_FILE, None, columns)
            result: dict[str, Any] = {"columns": sorted(columns)}
        else:
            trainer = recipe.trainer.build()
            result = train_body(trainer, samples, ctx.base_model, stage_dir, ctx, spec.overrides)
    except BaseException as exc:
        if rank == 0:
            write_error(stage_dir, exc)
        raise
    if rank == 0:
        result[RECORD] = ctx.records
        result[SECONDS] = round(time.perf_counter() - start, 3)
        Store.finish(stage_dir, result)


def main() -> None:
    try:
        run_job(Path(sys.argv[1]))
    except UserError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
