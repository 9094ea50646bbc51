"""``asyncflow run FILE.py:FLOW``: run a flow from a file inside a runner session built from the
command line, with an optional live progress display, trace and report."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import reprlib
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ._error_text import error_text
from ._events import TaskEvent
from ._flow import Flow
from ._flowfile import FlowFileError, check_call, load_flow, parse_flow_args, split_target
from ._futures import COMPLETED, Future
from ._progress import ProgressDisplay
from ._recorder import RunRecorder, check_outputs
from ._resolve import resolve_futures_async, resolve_futures_to_results
from ._runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from ._states import UPSTREAM_FAILED, StateType
from ._task import is_async_callable
from .exceptions import RemoteTraceback

__all__ = ("add_run_command", "observe")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_PROG = "asyncflow run"
_MAX_FAILURES_KEPT = 20


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_run_command(commands: Any) -> None:
    """Add the ``run`` sub-command to ``commands`` (an argparse sub-parsers object)."""
    run = commands.add_parser(
        "run",
        help="run a flow (or any function) defined in a Python file",
        description=(
            "Run FLOW from the Python file FILE inside a task runner session: tasks it submits "
            "run on that runner, and futures it returns are replaced by their results. "
            "Arguments after '--' go to the flow: key=value pairs as keyword arguments, other "
            "words as positional ones; values are parsed as JSON when they parse, else kept as "
            "strings. Exit status: 0 when the flow succeeded, 1 when it failed, 2 when the "
            "file, the flow or the arguments are wrong."
        ),
        epilog="example: asyncflow run flows.py:nightly --runner process -- day=3",
    )
    run.add_argument("target", metavar="FILE.py:FLOW", help="the file and the flow's name in it")
    run.add_argument(
        "--runner",
        choices=("thread", "process"),
        help="run sync task bodies in worker threads or worker processes (default: the flow's "
        "own task_runner, else thread)",
    )
    run.add_argument(
        "--max-workers",
        type=_positive_int,
        metavar="N",
        help="worker threads or processes (with --runner, or alone, it replaces the flow's own "
        "task_runner by a plain one of that kind)",
    )
    run.add_argument("--trace", metavar="FILE", help="write a trace of every task run to FILE")
    run.add_argument("--report", metavar="FILE", help="write a report of the run to FILE")
    run.add_argument(
        "--no-progress", action="store_true", help="no live progress display on the terminal"
    )
    run.add_argument(
        "--traceback", action="store_true", help="print the full traceback when the flow fails"
    )
    run.set_defaults(handler=run_command, flow_args=[])


# -- the glue to runner events and RunRecorder ---------------------------------------------------
def observe(
    runner: TaskRunner,
    subscribers: Sequence[Callable[[TaskEvent], None]],
    want_recorder: bool,
) -> RunRecorder | None:
    """Subscribe ``subscribers`` (plus a new ``RunRecorder`` when ``want_recorder``, returned)
    to the events of the runner's next session."""
    for subscriber in subscribers:
        runner.subscribe(subscriber)
    if not want_recorder:
        return None
    recorder = RunRecorder()
    runner.subscribe(recorder)
    return recorder


class _Failures:
    """A subscriber keeping the first failed runs: (task name, "TypeName: message")."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.count = 0
        self.skipped = 0  # of those, runs that never ran: an upstream failed

    def __call__(self, event: TaskEvent) -> None:
        if event.kind == "finished" and event.state in (StateType.FAILED, StateType.CRASHED):
            self.count += 1
            if event.state_name == UPSTREAM_FAILED:
                self.skipped += 1
            if len(self.seen) < _MAX_FAILURES_KEPT:
                self.seen.append((event.task_name, event.error or ""))


# -- running -------------------------------------------------------------------------------------
def _build_runner(args: argparse.Namespace, fn: Any) -> TaskRunner:
    own = fn.task_runner if isinstance(fn, Flow) else None
    if own is not None and args.runner is None and args.max_workers is None:
        return own.duplicate()
    kind = args.runner or ("process" if isinstance(own, ProcessPoolTaskRunner) else "thread")
    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=args.max_workers)
    return ThreadPoolTaskRunner(max_workers=args.max_workers)


def _run_sync(body: Callable[..., Any], runner: TaskRunner, args: Any, kwargs: Any) -> Any:
    with runner:
        return resolve_futures_to_results(body(*args, **kwargs))


async def _run_async(body: Callable[..., Any], runner: TaskRunner, args: Any, kwargs: Any) -> Any:
    async with runner:
        return await resolve_futures_async(await body(*args, **kwargs))


def _failed_task(exc: BaseException, failures: _Failures) -> str | None:
    """The name of the task whose failure ``exc`` is, when that can be told."""
    # Exact: the future whose result() raised it is on the traceback's frames.
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, Future) and owner._status > COMPLETED and owner._value is exc:
            return owner.task_name
        tb = tb.tb_next
    # Else by the error text of the failed runs' events.
    text = error_text(exc)
    for task_name, error in failures.seen:
        if error == text:
            return task_name
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _root_cause(exc: BaseException) -> BaseException | None:
    cause, seen = exc.__cause__, {id(exc)}
    root = None
    while cause is not None and id(cause) not in seen and not isinstance(cause, RemoteTraceback):
        seen.add(id(cause))
        root, cause = cause, cause.__cause__
    return root


def describe_failure(flow_name: str, exc: BaseException, failures: _Failures) -> str:
    """One paragraph saying why the flow failed."""
    what = _one_line(error_text(exc))
    task_name = _failed_task(exc, failures)
    message = f"flow {flow_name!r} failed: " + (
        f"task {task_name!r} failed with {what}" if task_name else what
    )
    root = _root_cause(exc)
    if root is not None:
        message += " " + _one_line(f"(caused by {type(root).__name__}: {root})")
    if failures.count > 1:
        message += f". {failures.count} task runs failed in all"
        if failures.skipped:
            message += f", {failures.skipped} of them without running (an upstream failed)"
    return message + ". Run with --traceback to see the traceback."


def _brief(value: Any) -> str:
    short = reprlib.Repr()
    short.maxstring = short.maxother = 200
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 20
    return short.repr(value)


def _say(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr)


@dataclasses.dataclass
class _Call:
    """A flow loaded from its file, with its arguments and the runner to run it in."""

    name: str
    body: Callable[..., Any]
    is_async: bool
    runner: TaskRunner
    args: list[Any]
    kwargs: dict[str, Any]

    def run(self) -> Any:
        if self.is_async:
            return asyncio.run(_run_async(self.body, self.runner, self.args, self.kwargs))
        return _run_sync(self.body, self.runner, self.args, self.kwargs)


def _load(args: argparse.Namespace) -> _Call:
    check_outputs(trace=args.trace, report=args.report)
    path, name = split_target(args.target)
    fn = load_flow(path, name)
    flow_args, flow_kwargs = parse_flow_args(args.flow_args)
    check_call(fn, name, flow_args, flow_kwargs)
    runner = _build_runner(args, fn)
    if isinstance(fn, Flow):
        return _Call(str(fn.name), fn.fn, fn.is_async, runner, flow_args, flow_kwargs)
    return _Call(name, fn, is_async_callable(fn), runner, flow_args, flow_kwargs)


def run_command(args: argparse.Namespace) -> int:
    try:
        call = _load(args)
    except (FlowFileError, ValueError, TypeError) as exc:  # ValueError: SettingsError
        _say(str(exc))
        return EXIT_USAGE

    progress = None if args.no_progress else ProgressDisplay(title=call.name)
    failures = _Failures()
    subscribers: list[Callable[[TaskEvent], None]] = [failures]
    if progress is not None and progress.enabled:
        subscribers.append(progress)
    recorder = observe(call.runner, subscribers, bool(args.trace or args.report))

    status, message = EXIT_OK, ""
    if progress is not None:
        progress.start()
    try:
        result = call.run()
    except KeyboardInterrupt:
        status, message = EXIT_INTERRUPTED, f"flow {call.name!r} interrupted"
    except SystemExit as exc:  # the flow called sys.exit(): its status, after the outputs
        status, message = _exit_status(call.name, exc.code)
    except Exception as exc:
        if args.traceback:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        status, message = EXIT_FAILED, describe_failure(call.name, exc, failures)
    else:
        if result is not None:
            message = _brief(result)
    finally:
        if progress is not None:
            progress.stop()

    if status == EXIT_OK:
        if message:
            print(message)
    else:
        _say(message)
    if recorder is not None:
        written = _write_outputs(recorder, args.trace, args.report)
        status = status or written  # (a flow's own exit status stays what it said)
    return status


def _exit_status(name: str, code: object) -> tuple[int, str]:
    """The status and message of a flow that called ``sys.exit(code)``, as Python would
    exit with it: None is 0, an int is itself, anything else is printed and is 1."""
    if code is None:
        return EXIT_OK, ""
    if isinstance(code, int):
        return code, "" if code == EXIT_OK else f"flow {name!r} exited with status {code}"
    return EXIT_FAILED, f"flow {name!r} exited: {code}"


def _write_outputs(recorder: RunRecorder, trace: str | None, report: str | None) -> int:
    status = EXIT_OK
    for kind, path, write in (
        ("trace", trace, recorder.write_trace),
        ("report", report, recorder.write_report),
    ):
        if not path:
            continue
        try:
            write(path)
        except OSError as exc:
            _say(f"could not write the {kind} to {path}: {exc.strerror or exc}")
            status = EXIT_FAILED
        else:
            _say(f"{kind} written to {path}")
    return status
