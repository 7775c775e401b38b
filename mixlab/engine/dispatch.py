"""Where jobs run: as local worker processes (several at once, each on its own GPUs, each optionally under
``torchrun`` for data-parallel training) or as Slurm jobs through submitit.

Every executor runs the same worker (mixlab.engine.worker) into the same content-addressed stage folder, so results
and caching are the same whichever ran them; the pipeline then reads the finished stages as it reads cached ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixlab.engine.jobs import ERROR_FILE, LOG_FILE, Job, failure
from mixlab.errors import UserError
from mixlab.sections import ExecutorSection


def worker_command(job_file: Path, processes: int) -> list[str]:
    """The command that runs one job: plain Python, or torchrun with N processes (GPU: nccl; CPU: gloo).

    torchrun is the launcher accelerate and DeepSpeed use underneath; the HF Trainer reads its environment
    (RANK, WORLD_SIZE, LOCAL_RANK) and, with a DeepSpeed config, initialises ZeRO from it."""
    if processes == 1:
        return [sys.executable, "-m", "mixlab.engine.worker", str(job_file)]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*launch, "-m", "mixlab.engine.worker", str(job_file)]


def worker_env(devices: str | None, threads: int | None) -> dict[str, str]:
    """The parent's environment, its import path, and the worker's GPUs or CPU thread share."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch(job_file: str, processes: int = 1) -> None:
    """Run one job in a child process (what a submitit job calls on its node); raise if it failed."""
    job_file_path = Path(job_file)
    log = job_file_path.parent / LOG_FILE
    with open(log, "ab") as out:
        code = subprocess.call(
            worker_command(job_file_path, processes), stdout=out, stderr=out, env=worker_env(None, None)
        )
    if code:
        raise RuntimeError(f"job {job_file} exited with code {code}; see {log}")


def die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function that makes a child process get SIGTERM when mixlab dies (killed, out of memory), so that
    no orphaned worker trains on into a stage folder that the next run works in; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def cpu_threads(o: ExecutorSection, jobs: int, cores: int | None = None) -> int | None:
    """torch's CPU threads in each process of a local executor: the cores shared by every process that runs at once
    (workers × `processes`), so that no two compete for a core; None where the workers have GPUs."""
    if o.devices:
        return None
    return max(1, (cores or os.cpu_count() or 1) // (min(o.workers, max(jobs, 1)) * o.processes))


def run_local(jobs: list[Job], o: ExecutorSection, on_done: Callable[[Job], None]) -> None:
    """Up to `workers` jobs at once as child processes; the others wait for a free slot (and its GPUs)."""
    slots: list[str | None] = list(o.devices) if o.devices else [None] * o.workers
    threads = cpu_threads(o, len(jobs))
    waiting = list(jobs)
    running: dict[int, tuple[subprocess.Popen, Job, Any, float]] = {}
    failed: list[Job] = []
    tie = die_with_parent()
    while waiting or running:
        for slot, devices in enumerate(slots):
            if slot not in running and waiting:
                job = waiting.pop(0)
                (job.stage_dir / ERROR_FILE).unlink(missing_ok=True)
                out = open(job.stage_dir / LOG_FILE, "ab")
                proc = subprocess.Popen(
                    worker_command(job.file, o.processes),
                    stdout=out,
                    stderr=out,
                    env=worker_env(devices, threads),
                    preexec_fn=tie,
                )
                running[slot] = (proc, job, out, time.perf_counter())
        time.sleep(0.2)
        for slot, (proc, job, out, _) in list(running.items()):
            if proc.poll() is not None:
                out.close()
                del running[slot]
                if proc.returncode:
                    failed.append(job)
                else:
                    on_done(job)
    if failed:
        raise failure(failed[0])


def run_submitit(jobs: list[Job], o: ExecutorSection, run_dir: Path, on_done: Callable[[Job], None]) -> None:
    """One submitit job per training (a Slurm array), at most `workers` running at once."""
    try:
        import submitit
    except ImportError:
        raise UserError(
            'executor type "submitit" needs submitit: pip install -e ".[cluster]" (or pip install submitit).'
        ) from None
    executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=o.cluster)
    params = {"slurm_array_parallelism": o.workers, **o.parameters}
    if executor.cluster != "slurm":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    executor.update_parameters(**params)
    submitted = executor.map_array(launch, [str(j.file) for j in jobs], [o.processes] * len(jobs))
    failed = []
    for job, handle in zip(jobs, submitted, strict=True):
        try:
            handle.result()
            on_done(job)
        except Exception:
            failed.append(job)
    if failed:
        raise failure(failed[0])


def run_jobs(jobs: list[Job], o: ExecutorSection, run_dir: Path, on_done: Callable[[Job], None]) -> None:
    """Run every job with the configured executor; ``on_done(job)`` is called as each one finishes."""
    if not jobs:
        return
    if o.type == "submitit":
        run_submitit(jobs, o, run_dir, on_done)
    else:
        run_local(jobs, o, on_done)
