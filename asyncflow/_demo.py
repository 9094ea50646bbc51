"""``asyncflow demo``: a small pipeline mixing async and sync tasks, a map and dependencies."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from ._annotations import allow_failure
from ._futures import Future
from ._runners import ThreadPoolTaskRunner
from ._task import task


@task
async def fetch(page: int) -> bytes:
    """An I/O-like coroutine: runs on the event loop."""
    await asyncio.sleep(0.01 * (page % 3))
    return f"page {page}: {'lorem ipsum dolor ' * (page + 1)}".encode()


@task
def digest(raw: bytes) -> str:
    """A blocking function: runs in a worker thread."""
    return hashlib.sha256(raw).hexdigest()[:12]


@task
def word_count(raw: bytes) -> int:
    return len(raw.split())


@task
def check_total(counts: list[int]) -> int:
    total = sum(counts)
    if total % 2:
        raise ValueError(f"the total, {total}, is odd")
    return total


@task
def report(digests: list[str], total: int | BaseException) -> str:
    status = f"total words {total}" if isinstance(total, int) else f"no total ({total})"
    return f"{len(digests)} pages digested; {status}"


async def _pipeline() -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    async with ThreadPoolTaskRunner(max_workers=4) as runner:
        pages = runner.map(fetch, {"page": range(5)})  # 5 coroutines on the loop
        digests = runner.map(digest, {"raw": pages})  # each starts when its page is fetched
        counts = runner.map(word_count, {"raw": pages})
        total = runner.submit(check_total, {"counts": counts})  # fails: the total is odd
        # allow_failure: the report runs anyway and gets the failure as a value
        summary = runner.submit(report, {"digests": digests, "total": allow_failure(total)})
        await summary
    runs = {"pages": pages, "digests": digests, "counts": counts, "total": total}
    return {**runs, "summary": summary}, time.perf_counter() - start


def run_demo() -> int:
    runs, elapsed = asyncio.run(_pipeline())
    print("asyncflow demo: 5 async fetches -> 10 sync tasks in threads -> a check -> a report")
    for page, dig, count in zip(runs["pages"], runs["digests"], runs["counts"], strict=True):
        print(
            f"  fetch {page.state.name:<9} -> digest {dig.result()} | "
            f"word_count {count.result():>2} words"
        )
    total: Future[int] = runs["total"]
    print(f"  check_total {total.state.name}: {total.exception()} (a failure on purpose)")
    summary: Future[str] = runs["summary"]
    print(f"  report {summary.state.name}: {summary.result()}")
    futures = [
        f for group in runs.values() for f in (group if isinstance(group, list) else [group])
    ]
    states: dict[str, int] = {}
    for f in futures:
        states[f.state.name] = states.get(f.state.name, 0) + 1
    print(
        f"{len(futures)} runs in {elapsed * 1000:.1f} ms: {states}; all final: "
        f"{all(f.done() for f in futures)}"
    )
    return 0
