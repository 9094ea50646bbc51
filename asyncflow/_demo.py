"""``asyncflow demo``: a small pipeline mixing async and sync tasks, a map and dependencies."""

from __future__ import annotations

import asyncio
import hashlib
import time

from ._annotations import allow_failure
from ._futures import Future
from ._runners import ThreadPoolTaskRunner
from ._task import task


@task
async def fetch(page: int) -> bytes:
    """An I/O-like coroutine: runs on the event loop."""
    await asyncio.sleep(0.01 * (page % 3))
    return f"page {page}: {'lorem ipsum ' * (page + 1)}".encode()


@task
def digest(raw: bytes) -> str:
    """A blocking function: runs in a worker thread."""
    return hashlib.sha256(raw).hexdigest()[:12]


@task
def word_count(raw: bytes) -> int:
    return len(raw.split())


@task
def flaky_total(counts: list[int]) -> int:
    if sum(counts) % 2:
        raise ValueError(f"odd total {sum(counts)} (a failure on purpose)")
    return sum(counts)


@task
def report(digests: list[str], total: int | BaseException) -> str:
    status = f"total words: {total}" if isinstance(total, int) else f"total failed: {total}"
    return f"{len(digests)} pages digested; {status}"


async def _pipeline() -> tuple[list[Future[bytes]], list[Future[str]], Future[str], float]:
    start = time.perf_counter()
    async with ThreadPoolTaskRunner(max_workers=4) as runner:
        pages = runner.map(fetch, {"page": range(6)})  # 6 coroutines on the loop
        digests = runner.map(digest, {"raw": pages})  # each waits for its page
        counts = runner.map(word_count, {"raw": pages})
        total = runner.submit(flaky_total, {"counts": counts})
        summary = runner.submit(report, {"digests": digests, "total": allow_failure(total)})
        await summary
    return pages, digests, summary, time.perf_counter() - start


def run_demo() -> int:
    pages, digests, summary, elapsed = asyncio.run(_pipeline())
    print("asyncflow demo: 6 async fetches -> 12 sync tasks in threads -> a total -> a report")
    for page, dig in zip(pages, digests, strict=True):
        print(f"  {page.task_name:<6} {page.state.name:<10} -> {dig.task_name} {dig.result()}")
    print(f"  {summary.task_name:<6} {summary.state.name:<10} -> {summary.result()}")
    print(f"done in {elapsed * 1000:.1f} ms; every task final: {summary.done()}")
    return 0
