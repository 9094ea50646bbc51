"""W6: 16 CPU-bound tasks of about 50 ms each on 2 worker processes: how close to the floor.

``burn`` is a pure-Python arithmetic loop whose loop count is calibrated once, in this process,
for about 50 ms per call (the best of five probes), so the floor is about 16 x 50 ms / 2 =
400 ms. The floor row measures it again in every round: the 16 calls timed here, one after
another, in this process, while the workers are idle, halved; a slow patch on the machine moves
it with the rest. (One call per round, times 8, was too noisy: within one run such a call took
from 30 to 50 ms.)
A second reference: two bare processes, started outside the timer, each sent one message
asking for 8 calls (no scheduling at all): what two processes running at once get on this
machine, which is not always twice what one gets (two vCPUs of a virtual machine).
Every system is started and warmed up outside the timer, and every run checks every result.
asyncflow: ``runner.map`` in one ``with ProcessPoolTaskRunner(2)`` session. The others:
``ProcessPoolExecutor(2)`` (spawn) ``map``, anyio's ``to_process.run_sync`` at most 2 at once,
Dask on 2 single-threaded worker processes, Ray on a local cluster of 2 CPUs (and asyncflow's
runners for both), Prefect's ``ProcessPoolTaskRunner(2)``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from asyncflow import ProcessPoolTaskRunner, TaskRunner, task

from ._config import Config
from ._field import Run, Skip, System, WrongAnswerError, measure
from ._report import Goal, Row
from ._systems import (
    Job,
    dask_runner_system,
    dask_system,
    loop_run,
    new_uvloop,
    prefect_processes,
    prefect_system,
    prefect_task,
    ray_each,
    ray_runner_system,
    ray_system,
    uvloop_missing,
)
from ._work import burn, burn_calls

__all__ = ("TARGET", "TASKS", "WORKERS", "calibrate", "run")

TASKS = 16
WORKERS = 2
TARGET = 0.050  # seconds of CPU per task
GOAL = Goal("<=", 1.1)
_PROBE = 200_000  # loop turns timed to calibrate
NAME = "W6 CPU-bound tasks (about 50 ms) on 2 processes"

burn_task = task(burn)


def _timed(loops: int) -> float:
    start = time.perf_counter()
    burn(loops)
    return time.perf_counter() - start


def calibrate() -> int:
    """The loop count for one ``TARGET``-second call (the best of five probes: a probe that
    another process slowed down does not count)."""
    best = min(_timed(_PROBE) for _ in range(5))
    return max(1, round(_PROBE * TARGET / best))


class _Check:
    def __init__(self, loops: int) -> None:
        self.loops = loops
        self.want = [burn(loops)] * TASKS

    def __call__(self, results: list[Any], n: int = TASKS) -> None:
        if results != self.want[:n]:
            raise WrongAnswerError("a call returned a wrong value")


def _others(
    loops: int, check: _Check
) -> tuple[
    Callable[[], Coroutine[Any, Any, float]],
    Callable[[Any], float],
    Callable[[TaskRunner], float],
    Callable[[], Job],
]:
    """The runs of anyio, Dask, asyncflow's Dask and Ray runners and Prefect."""

    def anyio_run() -> Coroutine[Any, Any, float]:
        async def run() -> float:
            import anyio
            import anyio.to_process

            limiter = anyio.CapacityLimiter(WORKERS)
            results: list[int | None] = [None] * TASKS

            async def one(i: int) -> None:
                results[i] = await anyio.to_process.run_sync(burn, loops, limiter=limiter)

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(TASKS):
                    tg.start_soon(one, i)
            seconds = time.perf_counter() - start
            check(results)
            return seconds

        return run()

    def dask_job(client: Any) -> float:
        start = time.perf_counter()
        futures = [client.submit(burn, loops, pure=False) for _ in range(TASKS)]
        results = client.gather(futures)
        seconds = time.perf_counter() - start
        check(results)
        return seconds

    def on_cluster_job(runner: TaskRunner) -> float:
        start = time.perf_counter()
        futures = [runner.submit(burn_task, {"loops": loops}) for _ in range(TASKS)]
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - start
        check(results)
        return seconds

    def prefect_job() -> Job:
        burn_p = prefect_task(burn)

        def job() -> float:
            start = time.perf_counter()
            futures = [burn_p.submit(loops) for _ in range(TASKS)]
            results = [f.result() for f in futures]
            seconds = time.perf_counter() - start
            check(results)
            return seconds

        return job

    return anyio_run, dask_job, on_cluster_job, prefect_job


@contextlib.contextmanager
def _bare(loops: int, check: _Check) -> Iterator[Run]:
    """``WORKERS`` processes started outside the timer, each sent one message: its share of
    the calls, all run there one after another."""
    spawn = multiprocessing.get_context("spawn")
    pipes: list[Any] = []
    procs: list[Any] = []
    try:
        for _ in range(WORKERS):
            parent, child = spawn.Pipe()
            proc = spawn.Process(target=burn_calls, args=(child,), daemon=True)
            proc.start()
            child.close()
            pipes.append(parent)
            procs.append(proc)

        def run() -> float:
            start = time.perf_counter()
            for conn in pipes:
                conn.send((loops, TASKS // WORKERS))
            results = [value for conn in pipes for value in conn.recv()]
            seconds = time.perf_counter() - start
            check(results)
            return seconds

        run()
        yield run
    finally:
        for conn in pipes:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def systems(loops: int) -> list[System | Skip]:
    check = _Check(loops)
    args = [loops] * TASKS

    @contextlib.contextmanager
    def ideal() -> Iterator[Run]:
        yield lambda: sum(_timed(loops) for _ in range(TASKS)) / WORKERS

    @contextlib.contextmanager
    def asyncflow() -> Iterator[Run]:
        with ProcessPoolTaskRunner(WORKERS) as runner:

            def run() -> float:
                start = time.perf_counter()
                results = runner.map(burn_task, {"loops": args}).result()
                seconds = time.perf_counter() - start
                check(results)
                return seconds

            run()  # start both workers
            yield run

    @contextlib.contextmanager
    def executor() -> Iterator[Run]:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(WORKERS, mp_context=spawn) as pool:

            def run() -> float:
                start = time.perf_counter()
                results = list(pool.map(burn, args))
                seconds = time.perf_counter() - start
                check(results)
                return seconds

            run()
            yield run

    anyio_run, dask_job, on_cluster_job, prefect_job = _others(loops, check)
    no_uvloop = uvloop_missing()
    anyio_name = "anyio.to_process.run_sync, at most 2 at once, uvloop"
    make_anyio: Callable[[], Coroutine[Any, Any, float]] = anyio_run
    return [
        System("asyncflow ProcessPoolTaskRunner(2), map", TASKS, asyncflow, asyncflow=True),
        System(
            f"floor: {TASKS} calls here, one after another, / {WORKERS}",
            TASKS,
            ideal,
            goal=GOAL,
            note=f"ratio: asyncflow over the floor; {loops:,} loop turns per call",
            floor=True,
        ),
        System(
            f"{WORKERS} bare processes, {TASKS // WORKERS} calls each, one message to start",
            TASKS,
            lambda: _bare(loops, check),
            note="what two processes at once get on this machine: no scheduling at all",
        ),
        System("ProcessPoolExecutor(2) (spawn), map", TASKS, executor),
        Skip(anyio_name, no_uvloop)
        if no_uvloop is not None
        else System(anyio_name, TASKS, lambda: loop_run(new_uvloop, make_anyio)),
        dask_runner_system(
            "2 processes", TASKS, on_cluster_job, processes=True, workers=2, threads=1
        ),
        dask_system("2 processes", TASKS, dask_job, processes=True, workers=2, threads=1),
        ray_runner_system("2 CPUs", TASKS, on_cluster_job, cpus=WORKERS),
        ray_system("2 CPUs", TASKS, ray_each(burn, args, check), cpus=WORKERS),
        prefect_system("ProcessPoolTaskRunner(2)", TASKS, prefect_processes(WORKERS), prefect_job),
    ]


def run(config: Config) -> list[Row]:
    return measure(NAME, systems(calibrate()), config)
