"""W3: 2,000 no-op sync tasks on 2 worker processes, from plain sync code.

Every system is started and warmed up outside the timer (its workers are running); the timer
covers the calls and the results, and every run checks that the results are the inputs, in
order. asyncflow: ``runner.map(noop_task, {"x": range(2000)}).result()`` in one
``with ProcessPoolTaskRunner(2)`` session (a first map lets the runner learn that the call is
cheap, so it sends such calls in batches); a second row submits call by call. Baselines on a
spawn ``ProcessPoolExecutor(2)``: ``submit`` per call then ``.result()`` (goal: asyncflow at
least 3 times the throughput), and ``map`` with ``chunksize=100``, a chunk size tuned by hand for
this batch (the former B5 goal: at least its throughput). anyio: ``to_process.run_sync`` per
call from a task group, at most 2 at once. Dask (2 single-threaded worker processes) and Ray
(a local cluster of 2 CPUs), and asyncflow's runners for both, do 500 calls.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from asyncflow import ProcessPoolTaskRunner, task

from ._config import Config
from ._field import Run, Skip, System, WrongAnswerError, measure
from ._report import Goal, Row
from ._systems import (
    anyio_each,
    dask_each,
    dask_runner_system,
    dask_system,
    loop_run,
    new_uvloop,
    prefect_each,
    prefect_processes,
    prefect_system,
    ray_each,
    ray_runner_system,
    ray_system,
    runner_each,
    uvloop_missing,
)
from ._work import noop

__all__ = ("CHUNKSIZE", "TASKS", "WORKERS", "run")

TASKS = 2_000
WORKERS = 2
CHUNKSIZE = 100
DASK_TASKS = 500
PREFECT_TASKS = 10
SUBMIT_GOAL = Goal("<=", 1 / 3)  # time ratio: at least 3 times the throughput of submit
MAP_GOAL = Goal("<=", 1.0)  # at least the throughput of the tuned map
NAME = "W3 sync no-op tasks on 2 processes"

noop_task = task(noop)


def check(results: list[Any], n: int) -> None:
    if results != list(range(n)):
        raise WrongAnswerError("the results are not the inputs, in order")


@contextlib.contextmanager
def _asyncflow(mapped: bool) -> Iterator[Run]:
    with ProcessPoolTaskRunner(WORKERS) as runner:

        def run() -> float:
            start = time.perf_counter()
            if mapped:
                results = runner.map(noop_task, {"x": range(TASKS)}).result()
            else:
                futures = [runner.submit(noop_task, {"x": i}) for i in range(TASKS)]
                results = [f.result() for f in futures]
            seconds = time.perf_counter() - start
            check(results, TASKS)
            return seconds

        run()  # start both workers, and learn that the call is cheap
        yield run


@contextlib.contextmanager
def _executor(chunksize: int | None) -> Iterator[Run]:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=spawn) as executor:

        def run() -> float:
            start = time.perf_counter()
            if chunksize is None:
                futures = [executor.submit(noop, i) for i in range(TASKS)]
                results = [f.result() for f in futures]
            else:
                results = list(executor.map(noop, range(TASKS), chunksize=chunksize))
            seconds = time.perf_counter() - start
            check(results, TASKS)
            return seconds

        run()  # start both workers
        yield run


_anyio = anyio_each("process", noop, TASKS, WORKERS, check)


_dask_job = dask_each(noop, DASK_TASKS, check)


_prefect_job = prefect_each(noop, PREFECT_TASKS, check)


def systems() -> list[System | Skip]:
    no_uvloop = uvloop_missing()
    anyio_name = "anyio.to_process.run_sync in a task group, uvloop"
    return [
        System(
            "asyncflow ProcessPoolTaskRunner(2), map",
            TASKS,
            lambda: _asyncflow(True),
            asyncflow=True,
        ),
        System(
            "asyncflow ProcessPoolTaskRunner(2), submit per call",
            TASKS,
            lambda: _asyncflow(False),
            asyncflow=True,
        ),
        System(
            "ProcessPoolExecutor(2) (spawn), submit + result",
            TASKS,
            lambda: _executor(None),
            goal=SUBMIT_GOAL,
        ),
        System(
            f"ProcessPoolExecutor(2) (spawn), map chunksize={CHUNKSIZE}",
            TASKS,
            lambda: _executor(CHUNKSIZE),
            goal=MAP_GOAL,
        ),
        Skip(anyio_name, no_uvloop)
        if no_uvloop is not None
        else System(anyio_name, TASKS, lambda: loop_run(new_uvloop, _anyio)),
        Skip(
            "asyncflow ThreadPoolTaskRunner",
            "its sync bodies run on threads, not in processes: that is W2",
        ),
        dask_runner_system(
            "2 processes",
            DASK_TASKS,
            runner_each(noop, DASK_TASKS, check),
            processes=True,
            workers=2,
            threads=1,
        ),
        dask_system("2 processes", DASK_TASKS, _dask_job, processes=True, workers=2, threads=1),
        ray_runner_system("2 CPUs", DASK_TASKS, runner_each(noop, DASK_TASKS, check), cpus=WORKERS),
        ray_system("2 CPUs", DASK_TASKS, ray_each(noop, list(range(DASK_TASKS)), check), cpus=2),
        prefect_system(
            "ProcessPoolTaskRunner(2)", PREFECT_TASKS, prefect_processes(WORKERS), _prefect_job
        ),
    ]


def run(config: Config) -> list[Row]:
    return measure(NAME, systems(), config)
