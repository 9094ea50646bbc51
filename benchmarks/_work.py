"""Task bodies of the process workloads (B5-B7).

Worker processes import this module by name to find these functions: asyncflow's workers through
cloudpickle (which pickles a module-level function by reference), ``ProcessPoolExecutor``'s
through plain pickle. So the functions live here, not in ``__main__``, and this module imports
only small parts of the standard library: a fresh worker (B7 times one) pays little to load it.
"""

from __future__ import annotations

import os
import time
from multiprocessing.connection import Connection

__all__ = ("burn", "burn_calls", "burn_timed", "noop", "step")


def noop(x: int) -> int:
    """B5: no work; the argument comes back so the results can be checked."""
    return x


def burn(loops: int) -> int:
    """B6: pure-Python CPU work, ``loops`` turns of a small arithmetic loop (holds the GIL).

    Every number stays below 2**30, one machine word inside the int, so each turn costs the
    same and the time is proportional to ``loops``: a probe of a few turns calibrates it.
    """
    x = 0
    for _ in range(loops):
        x = (x * 31 + 7) % 1_000_003
    return x


def burn_calls(conn: Connection) -> None:
    """B6: a bare worker process. For each ``(loops, calls)`` it receives, ``calls`` calls of
    ``burn(loops)``, their results sent back in one list; ``None`` ends it."""
    while (job := conn.recv()) is not None:
        loops, calls = job
        conn.send([burn(loops) for _ in range(calls)])


def burn_timed(loops: int) -> tuple[int, float, int]:
    """B6: ``burn(loops)``, the seconds it took where it ran, and the pid of that process."""
    start = time.perf_counter()
    value = burn(loops)
    return value, time.perf_counter() - start, os.getpid()


def step(i: int, crash: int, seconds: float, stamp: str) -> tuple[int, float]:
    """B7: task ``i`` of a batch: sleep ``seconds``, return (this worker's pid, start time).

    Task number ``crash`` instead writes its start time to the file ``stamp`` and kills its
    worker with ``os._exit(1)`` (no exception, no cleanup: as a segfault or the OOM killer
    would). ``time.monotonic`` is one system-wide clock on Linux and macOS, so the parent can
    compare these times with each other and with the stamp.
    """
    start = time.monotonic()
    if i == crash:
        with open(stamp, "w", encoding="utf-8") as file:  # not pathlib: a fresh worker
            file.write(repr(start))  # imports this module, and pathlib costs it ~7 ms
        os._exit(1)
    time.sleep(seconds)
    return os.getpid(), start
