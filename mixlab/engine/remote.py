"""Stage work handed to worker processes through the configured executor: trainings (several at once, or under
torchrun) and data-parallel scoring shards. Each worker finishes the same content-addressed folder as the pipeline
would, so the engine then reads it like a cached stage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mixlab.engine.bodies import SCORES_FILE
from mixlab.engine.dispatch import run_jobs
from mixlab.engine.jobs import Job, JobSpec, write_job
from mixlab.engine.stages import Engine
from mixlab.progress import ProgressBoard

if TYPE_CHECKING:
    import numpy as np

    from mixlab.data import Sample
    from mixlab.recipe import Recipe
    from mixlab.sections import Section


class Remote:
    """Writes job folders and runs them with [run.executor]; the engine then reads the finished stages."""

    def __init__(self, recipe: Recipe, run_dir: Path, engine: Engine, board: ProgressBoard):
        self.recipe = recipe
        self.run_dir = run_dir
        self.engine = engine
        self.store = engine.store
        self.board = board
        self.executor = recipe.run.executor

    def job_spec(
        self,
        kind: Literal["train", "score"],
        stage_dir: Path,
        base_model: Path,
        seed: int,
        seeds: list[int],
        **fields: Any,
    ) -> JobSpec:
        """What a worker needs to redo one job of this run."""
        from mixlab.registry import extra_plugin_modules

        return JobSpec(
            kind=kind,
            recipe=str(self.recipe.path.resolve()),
            run_dir=str(self.run_dir),
            stage_dir=str(stage_dir),
            base_model=str(base_model),
            seed=seed,
            seeds=seeds,
            plugins=extra_plugin_modules(),
            **fields,
        )

    def train(
        self,
        specs: list[tuple[list[Sample], str, dict[str, Any]]],
        overrides: dict[str, Any] | None,
        base_model: Path,
        seeds: list[int],
    ) -> None:
        """Hand the unfinished trainings to the executor; each worker finishes its own stage folder."""
        jobs = []
        for ordered, tag, material in specs:
            _, stage_dir = self.engine.folder("train", material)
            if self.engine.reusable(f"train:{tag}", material, stage_dir):
                continue
            job = Job(f"training {tag}", stage_dir)
            spec = self.job_spec("train", stage_dir, base_model, material["seed"], seeds, overrides=overrides)
            write_job(job, spec, ordered)
            self.store.event(event="submit", stage=f"train:{tag}", executor=self.executor.type)
            jobs.append(job)
        if not jobs:
            return
        with self.board.task(
            f"trainings ({self.executor.type}, {self.executor.workers} at once)", len(jobs)
        ) as advance:

            def done(job: Job) -> None:
                self.engine.finished_elsewhere(job.stage_dir)
                advance()

            run_jobs(jobs, self.executor, self.run_dir, done)

    def score_in_shards(
        self,
        section: Section,
        samples: list[Sample],
        reference_dir: Path | None,
        stage_dir: Path,
        base_model: Path,
        seeds: list[int],
    ) -> dict[str, np.ndarray]:
        """Data-parallel scoring: shard i scores samples i, i+n, … in a worker of its own; rows merged back in order."""
        import numpy as np

        n = self.executor.processes
        # named by their number: a rerun with another `processes` cuts the samples anew, not onto old shards
        shards = [Job(f"score:{section.label} shard {i + 1}/{n}", stage_dir / f"shard-{i}-of-{n}") for i in range(n)]
        todo = [job for job in shards if not self.store.is_done(job.stage_dir)]  # finished shards are kept
        reference = str(reference_dir) if reference_dir else None
        for i, job in enumerate(shards):
            if job in todo:
                spec = self.job_spec(
                    "score", job.stage_dir, base_model, seeds[0], seeds, scorer=section.label, reference=reference
                )
                write_job(job, spec, samples[i::n])
        with self.board.task(f"score:{section.label} ({n} shards)", len(todo)) as advance:
            run_jobs(todo, self.executor.for_shards(), self.run_dir, lambda job: advance())
        columns: dict[str, np.ndarray] = {}
        for i, job in enumerate(shards):
            with np.load(job.stage_dir / SCORES_FILE) as part:
                for col in part.files:
                    if col not in columns:
                        columns[col] = np.zeros((len(samples), *part[col].shape[1:]), dtype=part[col].dtype)
                    columns[col][i::n] = part[col]
        self.engine.record(shards=n)
        return columns
