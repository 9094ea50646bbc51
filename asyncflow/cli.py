"""The ``asyncflow`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ("main",)


def _demo(_args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo()


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
        help="run a small example pipeline and print what happened",
        description="Run a small example pipeline (async fetches, sync tasks in threads, a "
        "map, dependencies and a failure on purpose) and print what happened to each run.",
    )
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
    args = parser.parse_args(argv)
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
