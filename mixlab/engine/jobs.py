"""The job-folder protocol between the pipeline and a worker process.

The pipeline writes ``job.json`` (a ``JobSpec``) and the job's samples into the stage folder it wants finished; the
worker (mixlab.engine.worker) finishes that folder exactly as the pipeline would (``result.json`` then ``DONE``), or
leaves ``worker-error.json``. Whoever ran it, the folder is then read like any cached stage.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from mixlab.errors import UserError
from mixlab.store import atomic_write_json

JOB_FILE = "job.json"
ERROR_FILE = "worker-error.json"
LOG_FILE = "worker.log"
SAMPLES_FILE = "job-samples.parquet"


class JobSpec(BaseModel):
    """What a worker needs to redo one training or scoring shard of a run."""

    kind: Literal["train", "score"]
    recipe: str
    run_dir: str
    stage_dir: str
    base_model: str
    seed: int
    seeds: list[int]
    plugins: list[str] = []  # plugin modules added in-process (register_plugin), imported again by the worker
    overrides: dict[str, Any] | None = None  # train: trainer options overridden (alignment, per arm)
    scorer: str | None = None  # score: the [scorers.<label>] to run
    reference: str | None = None  # score: the reference model folder, if any


@dataclass
class Job:
    """One job to run: its stage folder holds job.json and the samples; DONE says it finished."""

    tag: str
    stage_dir: Path

    @property
    def file(self) -> Path:
        return self.stage_dir / JOB_FILE


def write_job(job: Job, spec: JobSpec, samples: list[Any]) -> None:
    """Write the job's samples and spec into its folder (the spec last: a job file means a complete job)."""
    from mixlab.store import save_samples

    job.stage_dir.mkdir(parents=True, exist_ok=True)
    save_samples(job.stage_dir / SAMPLES_FILE, samples)
    atomic_write_json(job.file, spec.model_dump())


def read_job(job_file: Path) -> JobSpec:
    return JobSpec.model_validate_json(Path(job_file).read_text())


def write_error(stage_dir: Path, exc: BaseException) -> None:
    """Leave the failure where the pipeline looks for it (a user error stays a user error)."""
    atomic_write_json(
        stage_dir / ERROR_FILE,
        {"user_error": isinstance(exc, UserError), "message": str(exc), "traceback": traceback.format_exc()},
    )


def failure(job: Job) -> UserError | RuntimeError:
    """The error a failed job left, as the pipeline raises it."""
    error = job.stage_dir / ERROR_FILE
    log = job.stage_dir / LOG_FILE
    if error.is_file():
        info = json.loads(error.read_text())
        if info.get("user_error"):
            return UserError(f"{job.tag}: {info['message']}")
        return RuntimeError(f"{job.tag} failed: {info['message']} (traceback: {error}; log: {log})")
    return RuntimeError(f"{job.tag} failed before it started; see {log}")
