"""Several batches through one model at once on a CPU: this thread prepares each batch (tokenizer, images), worker
threads run the model, each on its share of torch's threads.

On a few cores a small model's operations are too short to keep two threads busy inside one operation, and the
batch preparation leaves the cores idle while it runs; two batches at once, one thread each, fill both. On a GPU one
stream runs the model, so batches run one at a time there. The model's results are the same either way (each batch
is computed alone); docs/benchmarks.md has the measured speed-up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

Job = TypeVar("Job")
Prepared = TypeVar("Prepared")
Result = TypeVar("Result")

DEFAULT_AT_ONCE = 2


def batches_at_once(model: Any, requested: int | None = None) -> int:
    """How many batches to run at once: `requested`, else 2 on a CPU where torch has at least 2 threads; 1 on any
    other device (and whenever torch has a single thread, e.g. under a local executor's one-thread workers)."""
    import torch

    if getattr(getattr(model, "device", None), "type", "cpu") != "cpu":
        return 1
    if requested is not None:
        return max(1, int(requested))
    return min(DEFAULT_AT_ONCE, torch.get_num_threads())


@contextmanager
def _threads_shared_by(workers: int) -> Iterator[int]:
    """torch's CPU threads split between `workers` batches running at once (each one's share given); restored
    afterwards."""
    import torch

    total = torch.get_num_threads()
    share = max(1, total // workers)
    torch.set_num_threads(share)
    try:
        yield share
    finally:
        torch.set_num_threads(total)


def _use_threads(share: int) -> None:
    """Run in each worker thread as it starts: OpenMP keeps the thread count per thread and a new thread starts at
    the machine's default, whatever the calling thread set."""
    import torch

    torch.set_num_threads(share)


def in_flight(
    jobs: Iterable[Job],
    prepare: Callable[[Job], Prepared],
    compute: Callable[[Prepared], Result],
    *,
    at_once: int,
) -> Iterator[tuple[Job, Result]]:
    """(job, compute(prepare(job))) for every job, in order. `prepare` runs in this thread (tokenizers and processors
    are not safe to share between threads), `compute` in up to `at_once` worker threads at a time, with one more
    batch prepared and waiting, so that a worker that finishes starts the next at once; `compute` must be safe to
    call from several threads at once. An error in either comes out here; when `prepare` fails, the computations
    already started finish and their results come out first, so that a caller keeping each result loses none."""
    if at_once <= 1:
        for job in jobs:
            yield job, compute(prepare(job))
        return
    pending: deque[tuple[Job, Future[Result]]] = deque()

    def finished(keep: int) -> Iterator[tuple[Job, Result]]:
        while len(pending) > keep:
            done, future = pending.popleft()
            yield done, future.result()

    with (
        _threads_shared_by(at_once) as share,
        ThreadPoolExecutor(
            at_once, thread_name_prefix="mixlab-batch", initializer=_use_threads, initargs=(share,)
        ) as pool,
    ):
        for job in jobs:
            try:
                prepared = prepare(job)
            except Exception:
                yield from finished(0)
                raise
            pending.append((job, pool.submit(compute, prepared)))
            yield from finished(at_once + 1)
        yield from finished(0)
