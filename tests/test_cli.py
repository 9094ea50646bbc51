"""The ``asyncflow`` command, run as a subprocess on flow files written by the tests."""

from __future__ import annotations

import ast
import json
import os
import pty
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import asyncflow
from asyncflow.cli import main

SUBPROCESS_TIMEOUT = 40.0  # seconds; a process-runner flow starts worker processes
SOURCE_ROOT = str(Path(asyncflow.__file__).resolve().parent.parent)
README = Path(SOURCE_ROOT) / "README.md"

FLOWS = """
import asyncio
import dataclasses
import os
from asyncflow import ProcessPoolTaskRunner, flow, task


@task
def double(x: int) -> int:
    return x * 2


@task
def boom(x: int) -> int:
    raise ValueError(f"bad input {x}")


@flow
def pipeline(n: int = 3) -> list[int]:
    return [double.submit(i) for i in range(n)]


@flow(name="failing-pipeline")
def failing() -> int:
    return double.submit(boom.submit(1))


@flow
def fails_inside() -> int:
    return boom.submit(7).result() + 1


@task
async def forever() -> None:
    await asyncio.Event().wait()


@flow
def reads_a_cancelled_run() -> None:
    run = forever.submit()
    run.cancel()
    run.result()


def plain_failure() -> None:
    raise KeyError("no such thing")


@flow
async def async_pipeline(n: int = 2) -> list[int]:
    await asyncio.sleep(0)
    return [double.submit(i) for i in range(n)]


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def nothing() -> None:
    return None


@flow
def exits(code: object = 3) -> None:
    double.submit(4).result()
    raise SystemExit(code)


@dataclasses.dataclass
class Point:
    x: int


def square(x: int) -> Point:
    return Point(x * x)  # a class and a function defined here, run in worker processes


def in_processes(n: int = 4) -> list[int]:
    points = [task(square).submit(i) for i in range(n)]
    assert all(isinstance(p.result(), Point) for p in points)
    return [p.result().x for p in points]


def pid() -> int:
    return os.getpid()


@flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
def own_runner() -> bool:
    return task(pid).submit().result() != os.getpid()  # True: it ran in a worker process


@task(name="tripled")
async def async_task(x: int = 2) -> int:
    await asyncio.sleep(0)
    return x * 3


class AsyncCallable:
    async def __call__(self, n: int = 2) -> list[int]:
        await asyncio.sleep(0)
        return [double.submit(i) for i in range(n)]


async_object = AsyncCallable()


NOT_A_FUNCTION = 3

if __name__ == "__main__":
    raise SystemExit("the file is imported, not run as a script")
"""


def asyncflow_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT}
    return subprocess.run(
        [sys.executable, "-m", "asyncflow", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    path = tmp_path / "flows.py"
    path.write_text(textwrap.dedent(FLOWS))
    return path


def test_a_flow_that_succeeds_exits_0_and_prints_its_result(flows: Path) -> None:
    done = asyncflow_cli("run", f"{flows}:pipeline", cwd=flows.parent)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[0, 2, 4]\n", "")


def test_a_relative_path_and_an_async_flow(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:async_pipeline", "--max-workers", "2", cwd=flows.parent)
    assert (done.returncode, done.stdout) == (0, "[0, 2]\n")


def test_an_object_with_an_async_call_runs_as_an_async_flow(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:async_object", "--", "3", cwd=flows.parent)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[0, 2, 4]\n", "")


def test_an_async_task_runs_as_an_async_flow(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:async_task", "--", "x=4", cwd=flows.parent)
    assert (done.returncode, done.stdout, done.stderr) == (0, "12\n", "")


def test_a_result_of_none_prints_nothing(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:nothing", cwd=flows.parent)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_failing_flow_exits_1_naming_the_task_and_its_error(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:failing", cwd=flows.parent)
    assert done.returncode == 1
    assert done.stdout == ""
    message = done.stderr.strip()
    assert "\n" not in message  # one paragraph
    assert message.startswith("asyncflow run: flow 'failing-pipeline' failed: task 'double'")
    assert "its upstream task 'boom' failed" in message
    assert "(caused by ValueError: bad input 1)" in message
    assert "2 task runs failed in all, 1 of them without running (an upstream failed)" in message
    assert "Traceback" not in message


def test_a_cancelled_run_read_inside_the_flow_body_is_named(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:reads_a_cancelled_run", cwd=flows.parent)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        "asyncflow run: flow 'reads_a_cancelled_run' failed: task 'forever' failed with "
        "TaskCancelledError: task 'forever' was cancelled."
    )


def test_a_task_failing_inside_the_flow_body_is_named(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:fails_inside", cwd=flows.parent)
    assert done.returncode == 1
    assert "task 'boom' failed with ValueError: bad input 7" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failure_of_the_flow_itself_and_traceback_on_request(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:plain_failure", cwd=flows.parent)
    assert done.returncode == 1
    assert "flow 'plain_failure' failed: KeyError: 'no such thing'" in done.stderr
    assert "Traceback" not in done.stderr
    done = asyncflow_cli("run", "--traceback", "flows.py:plain_failure", cwd=flows.parent)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert 'raise KeyError("no such thing")' in done.stderr


def test_a_process_runner_runs_functions_and_classes_defined_in_the_flow_file(
    flows: Path,
) -> None:
    done = asyncflow_cli(
        "run", "flows.py:in_processes", "--runner", "process", "--max-workers", "2",
        cwd=flows.parent,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "[0, 1, 4, 9]\n", "")


def test_the_flows_own_runner_unless_the_options_choose_one(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:own_runner", cwd=flows.parent)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr
    done = asyncflow_cli("run", "flows.py:own_runner", "--runner", "thread", cwd=flows.parent)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


def test_flow_arguments_after_double_dash(flows: Path) -> None:
    done = asyncflow_cli(
        "run", "flows.py:echo", "--",
        "3", "word", "n=4", "ratio=0.5", "on=true", "items=[1, 2]", "name=plain text",
        "opts={\"a\": null}", "odd=[1,", "x=y=z",
        cwd=flows.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    received = ast.literal_eval(done.stdout)  # the printed repr of the flow's result
    assert received == {
        "args": [3, "word"],
        "kwargs": {
            "n": 4,
            "ratio": 0.5,
            "on": True,
            "items": [1, 2],
            "name": "plain text",
            "opts": {"a": None},
            "odd": "[1,",
            "x": "y=z",
        },
    }


def test_flow_arguments_without_double_dash_exit_2_saying_where_they_go(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:echo", "n=4", cwd=flows.parent)
    assert done.returncode == 2
    assert "unrecognized arguments: n=4 (arguments of the flow go after '--'" in done.stderr
    done = asyncflow_cli("demo", "--bogus", cwd=flows.parent)  # (no such hint for demo)
    assert done.returncode == 2
    assert done.stderr.rstrip().endswith("unrecognized arguments: --bogus")


def test_flow_arguments_the_flow_does_not_take_exit_2(flows: Path) -> None:
    done = asyncflow_cli("run", "flows.py:pipeline", "--", "m=1", cwd=flows.parent)
    assert done.returncode == 2
    assert "flow 'pipeline' cannot take these arguments" in done.stderr
    assert "'m'" in done.stderr
    done = asyncflow_cli("run", "flows.py:echo", "--", "a=1", "a=2", cwd=flows.parent)
    assert done.returncode == 2
    assert "flow argument 'a' is given twice" in done.stderr


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("missing.py:pipeline", ["no such file: missing.py", "'pipeline'"]),
        ("flows.py:nowhere", ["flows.py has no function 'nowhere'", "pipeline"]),
        (
            "flows.py:NOT_A_FUNCTION",
            ["'NOT_A_FUNCTION' in flows.py is not a function: it is an int"],
        ),
        ("broken.py:main", ["syntax error in ", "broken.py:2", "'main'"]),
        ("failing_import.py:main", ["importing ", "ModuleNotFoundError", "'main'"]),
        ("flows.py", ["expected FILE.py:FUNCTION"]),
    ],
)
def test_a_wrong_file_or_name_exits_2_naming_them(
    flows: Path, target: str, expected: list[str]
) -> None:
    (flows.parent / "broken.py").write_text("def main():\n    return (\n")
    (flows.parent / "failing_import.py").write_text("import no_such_module_here\n")
    done = asyncflow_cli("run", target, cwd=flows.parent)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for part in expected:
        assert part in lines[0]


def test_help_of_every_command(tmp_path: Path) -> None:
    for command, expected in [
        ("run", ["FILE.py:FLOW", "--runner", "--max-workers", "--trace", "--no-progress"]),
        ("demo", ["usage: asyncflow demo"]),
    ]:
        done = asyncflow_cli(command, "--help", cwd=tmp_path)
        assert done.returncode == 0
        for part in expected:
            assert part in done.stdout
    bare = asyncflow_cli(cwd=tmp_path)
    assert bare.returncode == 2
    assert "demo" in bare.stdout
    assert "run" in bare.stdout


def test_the_readme_example_of_the_command(tmp_path: Path) -> None:
    text = README.read_text()
    flow_file = re.search(r"```python\n# pipelines.py\n(.*?)```", text, re.S)
    session = re.search(r"```sh\n\$ asyncflow (run pipelines.py.*?)\n(.*?)\n```", text, re.S)
    assert flow_file is not None
    assert session is not None
    (tmp_path / "pipelines.py").write_text(flow_file.group(1))
    done = asyncflow_cli(*shlex.split(session.group(1)), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == session.group(2) + "\n"


def test_the_demo_runs_its_pipeline_and_writes_trace_report_and_graph(tmp_path: Path) -> None:
    done = asyncflow_cli("demo", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    for name in (
        "asyncflow-demo-trace.json",
        "asyncflow-demo-report.html",
        "asyncflow-demo-graph.mmd",
    ):
        assert str((out / name).resolve()) in done.stdout  # it says where each file is
    assert "check_total Failed: ValueError" in done.stdout  # the failure on purpose
    assert "summary: 8 pages scored" in done.stdout  # absorbed with allow_failure
    assert "27 runs, 27 final" in done.stdout
    spans = [
        e
        for e in json.loads((out / "asyncflow-demo-trace.json").read_text())["traceEvents"]
        if e["ph"] == "X"
    ]
    names = sorted({e["name"].split(" ")[0] for e in spans})
    assert names == ["check_total", "crunch", "fetch", "fetch_index", "parse", "summarize"]
    assert len(spans) == 28  # 27 runs, the flaky fetch twice
    crunch_pids = {e["pid"] for e in spans if e["name"].startswith("crunch")}
    assert 1 not in crunch_pids  # pid 1 stands for this process: crunch ran in workers
    assert 1 <= len(crunch_pids) <= 2  # on at most the 2 worker processes
    graph = (out / "asyncflow-demo-graph.mmd").read_text()
    assert graph.startswith("flowchart TD")
    assert graph.count("-->") >= 8 * 3 + 2  # fetch->parse->crunch per page, crunch->check...
    assert "check_total" in (out / "asyncflow-demo-report.html").read_text()


def demo_on_a_terminal(cwd: Path, pythonpath: str = SOURCE_ROOT) -> str:
    """What ``asyncflow demo`` shows on a terminal (a pseudo-terminal) until it exits."""
    parent, child = pty.openpty()
    env = {**os.environ, "PYTHONPATH": pythonpath, "TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncflow", "demo"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the child side closed: the demo has exited
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(SUBPROCESS_TIMEOUT) == 0, seen.decode(errors="replace")
    finally:
        os.close(parent)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return seen.decode(errors="replace")


def test_the_demo_shows_live_progress_on_a_terminal(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    text = demo_on_a_terminal(tmp_path)
    assert "asyncflow demo: 27 submitted, 26 done, 1 failed" in text  # the final progress line
    assert "runs/s" in text
    assert "no live progress" not in text


def test_the_demo_says_why_it_shows_no_progress_without_rich(tmp_path: Path) -> None:
    blocked = tmp_path / "no-rich"
    (blocked / "rich").mkdir(parents=True)
    (blocked / "rich" / "__init__.py").write_text('raise ImportError("rich is not installed")\n')
    text = demo_on_a_terminal(tmp_path, pythonpath=f"{blocked}{os.pathsep}{SOURCE_ROOT}")
    assert "no live progress: it needs rich, the 'rich' extra" in text
    assert "runs/s" not in text


# -- the glue to runner events (in process) -------------------------------------------------------
def test_trace_and_report_are_written_from_the_runs_events(
    flows: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading the file adds its directory
    trace, report = flows.parent / "trace.json", flows.parent / "report.html"
    status = main(
        ["run", f"{flows}:pipeline", "--trace", str(trace), "--report", str(report), "--", "n=2"]
    )
    out, err = capsys.readouterr()
    assert status == 0
    assert out == "[0, 2]\n"
    spans = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    assert sorted(e["name"] for e in spans) == ["double", "double"]
    assert report.read_text().count("double") >= 2
    assert f"trace written to {trace}" in err
    assert f"report written to {report}" in err


@pytest.mark.parametrize(
    ("code", "status", "said"),
    [
        ("3", 3, "asyncflow run: flow 'exits' exited with status 3\n"),
        ("0", 0, ""),
        ("null", 0, ""),  # JSON: None
        ("no more", 1, "asyncflow run: flow 'exits' exited: no more\n"),
    ],
)
def test_a_flow_that_calls_sys_exit_exits_with_its_status_after_writing_its_outputs(
    flows: Path, code: str, status: int, said: str
) -> None:
    trace = flows.parent / "trace.json"
    done = asyncflow_cli(
        "run",
        "flows.py:exits",
        "--no-progress",
        "--trace",
        str(trace),
        "--",
        f"code={code}",
        cwd=flows.parent,
    )
    assert done.returncode == status
    assert done.stderr == said + f"asyncflow run: trace written to {trace}\n"
    spans = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    assert [e["name"] for e in spans] == ["double"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--trace", "nodir/t.json"], "cannot write the trace to nodir/t.json: no directory nodir"),
        (["--report", "."], "cannot write the report to .: it is a directory"),
        (["--trace", "same.out", "--report", "same.out"], "would both be written to same.out"),
    ],
)
def test_an_output_that_cannot_be_written_is_said_before_the_run(
    flows: Path, options: list[str], expected: str
) -> None:
    done = asyncflow_cli("run", *options, f"{flows}:pipeline", cwd=flows.parent)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # (the flow did not run: it prints its result when it does)
    assert expected in done.stderr


def test_the_demo_says_when_its_output_directory_cannot_be_used(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    done = asyncflow_cli("demo", "--no-progress", "--out", "a-file", cwd=tmp_path)
    assert done.returncode == 2
    assert "asyncflow demo: cannot use a-file for its files" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "d" / "asyncflow-demo-report.html").mkdir(parents=True)
    done = asyncflow_cli("demo", "--no-progress", "--out", "d", cwd=tmp_path)
    assert done.returncode == 2
    assert "asyncflow demo: cannot write the report to d/asyncflow-demo-report.html" in done.stderr
    assert not (tmp_path / "d" / "asyncflow-demo-trace.json").exists()  # (said before the run)


def test_an_empty_output_name_is_no_output(flows: Path) -> None:
    # (A script may pass --trace "${TRACE:-}" to turn the trace off.)
    done = asyncflow_cli("run", "--trace", "", f"{flows}:pipeline", cwd=flows.parent)
    assert (done.returncode, done.stdout) == (0, "[0, 2, 4]\n"), done.stderr
