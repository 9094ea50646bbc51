"""The ``asyncflow`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ("main",)


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(args.out, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._run_command import add_run_command

    parser = argparse.ArgumentParser(
        prog="asyncflow", description="asyncio-native task orchestration, no server."
    )
    parser.add_argument("--version", action="version", version=f"asyncflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run an example pipeline, show its progress, write its trace, report and graph",
        description="Run an example pipeline that needs no network: a flaky fetch that is "
        "retried, a mapped stage of async fetches, parsing in threads, CPU work in worker "
        "processes, and a failure on purpose absorbed with allow_failure. Shows live "
        "progress (with rich, on a terminal), prints a table of what ran, and writes "
        "asyncflow-demo-trace.json, asyncflow-demo-report.html and asyncflow-demo-graph.mmd.",
    )
    demo.add_argument(
        "--out", default=".", metavar="DIR", help="where to write the files (default: here)"
    )
    demo.add_argument("--no-progress", action="store_true", help="no live progress display")
    demo.set_defaults(handler=_demo)
    add_run_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the flow, not to asyncflow.
    passed: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passed = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ""
        if getattr(args, "command", None) == "run" and not passed:
            hint = f" (arguments of the flow go after '--': ... -- {' '.join(extra)})"
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    if passed:
        if args.command != "run":
            parser.error(f"only 'run' takes arguments after '--', not {args.command!r}")
        args.flow_args = passed
    return int(handler(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
