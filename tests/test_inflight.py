"""Batches at once: results in order, preparation in the calling thread, runs in workers, errors surface."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from mixlab.models.inflight import batches_at_once, in_flight


def _recorder():
    seen = {"prepared_in": set(), "ran_in": set(), "running": 0, "peak": 0, "threads": set()}
    lock = threading.Lock()

    def prepare(job: int) -> int:
        seen["prepared_in"].add(threading.get_ident())
        return job * 10

    def run(prepared: int) -> int:
        with lock:
            seen["running"] += 1
            seen["peak"] = max(seen["peak"], seen["running"])
            seen["ran_in"].add(threading.get_ident())
            seen["threads"].add(torch.get_num_threads())
        time.sleep(0.05)  # long enough for the next run to start beside it
        with lock:
            seen["running"] -= 1
        return prepared + 1

    return seen, prepare, run


def test_in_flight_keeps_the_order_and_runs_two_at_once_elsewhere():
    seen, prepare, run = _recorder()
    before = torch.get_num_threads()
    out = list(in_flight(range(7), prepare, run, at_once=2))
    assert out == [(j, j * 10 + 1) for j in range(7)]
    assert seen["prepared_in"] == {threading.get_ident()}  # tokenizers stay in this thread
    assert threading.get_ident() not in seen["ran_in"]
    assert seen["peak"] == 2
    assert seen["threads"] == {max(1, before // 2)}  # torch's threads shared between the two
    assert torch.get_num_threads() == before


def test_in_flight_one_at_a_time_runs_here():
    seen, prepare, run = _recorder()
    assert list(in_flight([3, 1], prepare, run, at_once=1)) == [(3, 31), (1, 11)]
    assert seen["ran_in"] == {threading.get_ident()} and seen["peak"] == 1


def test_in_flight_passes_an_error_on_and_restores_the_threads():
    before = torch.get_num_threads()

    def run(prepared: int) -> int:
        if prepared == 2:
            raise ValueError("batch 2 failed")
        return prepared

    with pytest.raises(ValueError, match="batch 2 failed"):
        list(in_flight(range(5), lambda j: j, run, at_once=2))
    assert torch.get_num_threads() == before


def test_in_flight_gives_out_what_ran_before_a_preparation_fails():
    _, _, run = _recorder()

    def prepare(job: int) -> int:
        if job == 3:
            raise ValueError("cannot build batch 3")
        return job * 10

    got = []
    with pytest.raises(ValueError, match="cannot build batch 3"):
        for result in in_flight(range(6), prepare, run, at_once=2):
            got.append(result)
    assert got == [(0, 1), (1, 11), (2, 21)]  # 1 and 2 were still running when batch 3 failed


def test_batches_at_once_by_device_and_request():
    cpu, gpu = SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=SimpleNamespace(type="cuda"))
    assert batches_at_once(cpu) == min(2, torch.get_num_threads())
    assert batches_at_once(cpu, 3) == 3
    assert batches_at_once(gpu) == 1 and batches_at_once(gpu, 3) == 1


def test_each_worker_sets_its_own_share_of_the_threads(monkeypatch):
    """OpenMP keeps torch's thread count per thread, and a new thread starts at the machine's default: each worker
    must set its share itself, not rely on the calling thread's setting."""
    real, calls = torch.set_num_threads, []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append((threading.get_ident(), n)) or real(n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    ran_in = set()
    list(in_flight(range(4), lambda j: j, lambda j: ran_in.add(threading.get_ident()), at_once=2))
    by_workers = {(ident, n) for ident, n in calls if ident != threading.get_ident()}
    assert ran_in and {ident for ident, _ in by_workers} >= ran_in
    assert {n for _, n in by_workers} == {2}


def test_the_next_batch_is_prepared_while_both_workers_run():
    """With two batches running, a third is already prepared and a fourth being prepared: a worker that finishes
    starts the next batch without waiting for its preparation."""
    fourth_prepared = threading.Event()

    def prepare(job: int) -> int:
        if job == 3:
            fourth_prepared.set()
        return job

    def run(job: int) -> bool:
        return fourth_prepared.wait(timeout=5) if job == 0 else True

    assert [ok for _, ok in in_flight(range(5), prepare, run, at_once=2)] == [True] * 5
