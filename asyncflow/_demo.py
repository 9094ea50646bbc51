"""``asyncflow demo``: an example pipeline that needs no network and no set-up.

An index is fetched (a flaky coroutine, retried once), its pages are fetched on the event loop
(a mapped stage), parsed in worker threads, scored by CPU-heavy work in worker processes, and
a check fails on purpose; the summary absorbs that failure with ``allow_failure``. A live
progress display runs while it works (when rich is installed and the output is a terminal);
then a table of what ran is printed and a trace, an HTML report and a Mermaid graph are
written.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from ._annotations import allow_failure, unmapped
from ._context import get_run_context
from ._futures import Future
from ._progress import ProgressDisplay
from ._recorder import RunRecorder, check_outputs
from ._runlog import RunSummary
from ._runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from ._task import task

__all__ = ("run_demo",)

PAGES = 8
TRACE = "asyncflow-demo-trace.json"
REPORT = "asyncflow-demo-report.html"
GRAPH = "asyncflow-demo-graph.mmd"


@task(retries=2, retry_delay=0.05)
async def fetch_index() -> list[int]:
    """A flaky coroutine: its first attempt fails, the retry succeeds."""
    attempt = get_run_context().attempt
    await asyncio.sleep(0.02)
    if attempt == 1:
        raise ConnectionError("the index server is busy (attempt 1 of at most 3)")
    return list(range(PAGES))


@task
async def fetch(page: int) -> bytes:
    """An I/O-like coroutine: runs on the event loop, many at once."""
    await asyncio.sleep(0.03 + 0.02 * (page % 4))
    return f"page {page}: {'lorem ipsum dolor sit amet ' * (page + 2)}".encode()


@task
def parse(raw: bytes) -> list[str]:
    """A blocking function: runs in a worker thread."""
    time.sleep(0.01)  # stands for blocking I/O
    return raw.decode().split()


def crunch(words: list[str], rounds: int) -> int:
    """CPU-heavy pure Python: runs in a worker process."""
    digest = " ".join(words).encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest[0] + len(words)


BUDGET = 200


@task
def check_total(scores: list[int]) -> int:
    total = sum(scores)
    if total > BUDGET:
        raise ValueError(f"the total score, {total}, is over the budget of {BUDGET} (on purpose)")
    return total


@task
def summarize(scores: list[int], total: int | BaseException) -> str:
    status = f"total {total}" if isinstance(total, int) else f"no total ({total})"
    return f"{len(scores)} pages scored (best {max(scores)}); {status}"


@dataclass
class _Outcome:
    summary: Future[str]
    runs: list[Future[Any]]
    seconds: float


# This module's functions travel to worker processes by value, so the workers need not import
# asyncflow (they start faster).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


async def _pipeline(io: ThreadPoolTaskRunner, cpu: ProcessPoolTaskRunner, rounds: int) -> _Outcome:
    start = time.perf_counter()
    async with io, cpu:
        index = io.submit(fetch_index)
        pages = io.map(fetch, {"page": await index})
        texts = io.map(parse, {"raw": pages})
        # A future of one runner can be the input of another's task.
        scores = cpu.map(task(crunch), {"words": texts, "rounds": unmapped(rounds)})
        total = io.submit(check_total, {"scores": scores})
        summary = io.submit(summarize, {"scores": scores, "total": allow_failure(total)})
        await summary
    runs = [index, *pages, *texts, *scores, total, summary]
    return _Outcome(summary, runs, time.perf_counter() - start)


def _table(recorder: RunRecorder) -> list[tuple[str, ...]]:
    """Per task, in order of first appearance: runs, final states, attempts, longest run."""
    tasks: dict[str, list[RunSummary]] = {}
    for run in recorder.runs():
        tasks.setdefault(run.task_name, []).append(run)
    rows: list[tuple[str, ...]] = []
    for name, runs in tasks.items():
        states: dict[str, int] = {}
        for run in runs:
            states[run.state_name] = states.get(run.state_name, 0) + 1
        longest = max((run.duration or 0.0 for run in runs), default=0.0)
        rows.append(
            (
                name,
                str(len(runs)),
                ", ".join(f"{state} {n}" for state, n in states.items()),
                str(sum(run.attempts for run in runs)),
                f"{longest * 1000:.0f} ms",
            )
        )
    return rows


_HEADERS = ("task", "runs", "final states", "attempts", "longest")


def _print_summary(recorder: RunRecorder) -> None:
    rows = _table(recorder)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(r[i]) for r in [_HEADERS, *rows]) for i in range(len(_HEADERS))]
        for row in [_HEADERS, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        return
    table = Table(title="what ran")
    for header in _HEADERS:
        table.add_column(header, justify="right" if header in ("runs", "attempts") else "left")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def run_demo(out_dir: str | Path = ".", rounds: int = 20_000, progress: bool = True) -> int:
    """Run the pipeline; print what ran; write the trace, report and graph to ``out_dir``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"asyncflow demo: cannot use {out} for its files: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    try:
        check_outputs(trace=out / TRACE, report=out / REPORT, graph=out / GRAPH)
    except ValueError as exc:
        print(f"asyncflow demo: {exc}", file=sys.stderr)
        return 2
    io = ThreadPoolTaskRunner(max_workers=4)
    cpu = ProcessPoolTaskRunner(max_workers=2)
    recorder = RunRecorder()
    display = ProgressDisplay(title="asyncflow demo") if progress else None
    if display is not None and not display.enabled and sys.stderr.isatty():
        print(
            "(no live progress: it needs rich, the 'rich' extra: pip install 'asyncflow[rich]')",
            file=sys.stderr,
        )
    for runner in (io, cpu):
        runner.subscribe(recorder)
        if display is not None and display.enabled:
            runner.subscribe(display)
    print(
        "asyncflow demo: a flaky index fetch (retried) -> 8 page fetches on the loop -> parsed "
        "in threads -> scored in 2 worker processes -> a check that fails on purpose -> a "
        "summary that absorbs the failure"
    )
    if display is not None:
        display.start()
    try:
        outcome = asyncio.run(_pipeline(io, cpu, rounds))
    finally:
        if display is not None:
            display.stop()
    _print_summary(recorder)
    for run in recorder.runs():
        if run.error and run.state_name != "Completed":
            print(f"{run.task_name} {run.state_name}: {run.error}")
    print(f"summary: {outcome.summary.result()}")
    finals = sum(f.done() for f in outcome.runs)
    print(f"{len(outcome.runs)} runs, {finals} final, in {outcome.seconds:.2f} s")
    trace = recorder.write_trace(out / TRACE)
    report = recorder.write_report(out / REPORT, title="asyncflow demo")
    graph = out / GRAPH
    graph.write_text(recorder.mermaid() + "\n", encoding="utf-8")
    print(f"trace (open in https://ui.perfetto.dev or chrome://tracing): {trace.resolve()}")
    print(f"report (open in a browser): {report.resolve()}")
    print(f"graph (Mermaid): {graph.resolve()}")
    return 0 if finals == len(outcome.runs) else 1
