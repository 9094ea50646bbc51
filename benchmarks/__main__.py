"""``python -m benchmarks [--quick] [--json FILE]``: run the workloads, print a Markdown table.

The exit status is 0 even when a goal is missed: this is a report, and a missed goal reads
**FAIL** in the table and in the summary line under it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Absolute imports: anyio's worker processes run this file by its path (as multiprocessing's
# spawn does), where a relative import has no package to be relative to.
from benchmarks import (
    b4_memory,
    b7_process_crash,
    w1_async_tasks,
    w2_sync_tasks,
    w3_process_noop,
    w4_dag,
    w5_sleep,
    w6_process_cpu,
    w7_scaling,
    w8_sync_script,
)
from benchmarks._config import Config
from benchmarks._report import Row, environment, markdown_table, write_json

WORKLOADS: dict[str, Callable[[Config], list[Row]]] = {
    "W1": w1_async_tasks.run,
    "W2": w2_sync_tasks.run,
    "W3": w3_process_noop.run,
    "W4": w4_dag.run,
    "W5": w5_sleep.run,
    "W6": w6_process_cpu.run,
    "W7": w7_scaling.run,
    "W8": w8_sync_script.run,
    "B4": b4_memory.run,
    "B7": b7_process_crash.run,
}

# Run before the others: the workloads that compare asyncflow with itself over time (sizes,
# batches), so that no server of another system is still busy in the background meanwhile
# (Prefect's keeps working through what it was sent for a while after its rounds).
FIRST = frozenset({"W7", "B4", "B7"})

FULL = Config(runs=7, warmup=2, quick=False)
QUICK = Config(runs=5, warmup=1, quick=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="asyncflow's cost per task next to asyncio, anyio, concurrent.futures, Dask "
        "and Prefect.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer timed rounds and a shorter memory soak"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every row as JSON")
    parser.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="timed rounds per system (default 7, quick 5; Dask and Prefect: at most 5)",
    )
    parser.add_argument(
        "--only",
        metavar="W1,B4",
        help=f"run only these workloads (of {', '.join(WORKLOADS)})",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.only is not None:
        chosen = [name.strip().upper() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in WORKLOADS]
        if unknown or not chosen:
            parser.error(f"--only takes names from {', '.join(WORKLOADS)}, got {args.only!r}")
        args.only = chosen
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    config = QUICK if args.quick else FULL
    if args.runs is not None:
        config = Config(runs=args.runs, warmup=config.warmup, quick=config.quick)
    names = [name for name in WORKLOADS if args.only is None or name in args.only]
    env = environment()
    print(
        f"asyncflow benchmarks: Python {env['python']} ({env['implementation']}), "
        f"{env['cpus']} CPUs, {env['platform']}; asyncflow {env['asyncflow']} from "
        f"{env['asyncflow_path']}; {config.runs} timed rounds per side "
        f"after {config.warmup} warm-up{' (quick)' if config.quick else ''}",
        flush=True,
    )
    found: dict[str, list[Row]] = {}
    began = time.perf_counter()
    for name in sorted(names, key=lambda n: n not in FIRST):
        start = time.perf_counter()
        found[name] = WORKLOADS[name](config)
        print(f"{name} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - began
    rows = [row for name in names for row in found[name]]
    print()
    print(markdown_table(rows))
    print()
    missed = [row for row in rows if row.ok is False]
    goals = [row for row in rows if row.ok is not None]
    if missed:
        print(f"FAIL: {len(missed)} of {len(goals)} goals missed:")
        for row in missed:
            print(f"  - {row.workload} [{row.system}]")
    else:
        print(f"PASS: every goal met ({len(goals)} of {len(goals)})")
    print(f"total {elapsed:.1f} s")
    if args.json is not None:
        write_json(
            args.json,
            rows,
            {"runs": config.runs, "warmup": config.warmup, "quick": config.quick},
        )
        print(f"rows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
