"""RunRecorder: collecting events from any thread, and one summary per run."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from eventlog import ORIGIN, EventLog, Sample
from helpers import TIMEOUT

import asyncflow
from asyncflow import RunRecorder, RunSummary, StateType, ThreadPoolTaskRunner, task
from asyncflow._events import TaskEvent
from asyncflow._recorder import check_outputs


def by_id(recorder: RunRecorder) -> dict[object, RunSummary]:
    return {run.run_id: run for run in recorder.runs()}


def test_runs_summarize_each_run() -> None:
    sample = Sample()
    runs = by_id(RunRecorder(sample.events))
    assert len(runs) == 8
    fetch = runs[sample.fetch]
    assert (fetch.task_name, fetch.state, fetch.state_name) == (
        "fetch",
        StateType.COMPLETED,
        "Completed",
    )
    assert fetch.attempts == 2
    assert fetch.start == ORIGIN + 0.010
    assert fetch.end == ORIGIN + 0.600
    assert fetch.duration == pytest.approx(0.590)
    assert fetch.worker == "thread w-1"  # where the last attempt ran
    assert fetch.error is None  # the retried attempt's error does not stay on a completed run
    assert [s.outcome for s in fetch.spans] == ["Retrying", "Completed"]

    parse = runs[sample.parse]
    assert parse.state is StateType.FAILED
    assert parse.error == "ValueError: bad page"
    assert parse.upstream == (sample.fetch,)

    store = runs[sample.store]
    assert (store.state_name, store.attempts, store.started) == ("UpstreamFailed", 0, False)
    assert (store.start, store.duration, store.worker) == (None, None, None)
    assert store.end == ORIGIN + 0.810

    waiter = runs[sample.waiter]
    assert (waiter.state, waiter.started) == (StateType.CANCELLED, False)

    slow = runs[sample.slow]
    assert (slow.state, slow.final, slow.end) == (StateType.RUNNING, False, None)
    assert slow.spans[0].ended is False


def test_a_run_between_attempts_is_retrying_and_one_not_started_is_pending() -> None:
    log = EventLog()
    waiting = log.submit("waiting", 0.0)
    between = log.submit("between", 0.0)
    log.start(between, 0.1, "loop")
    log.retry(between, 0.2, "OSError: again")
    runs = by_id(RunRecorder(log.events))
    assert runs[waiting].state is StateType.PENDING
    assert runs[between].state is StateType.RETRYING
    assert runs[between].error == "OSError: again"


def test_events_from_many_threads_are_all_kept() -> None:
    events = Sample().events
    recorder = RunRecorder()
    start = threading.Barrier(4)

    def feed() -> None:
        start.wait(TIMEOUT)
        for event in events:
            recorder(event)

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(recorder) == 4 * len(events)
    assert sorted(map(id, recorder.events)) == sorted(map(id, events * 4))
    recorder.clear()
    assert recorder.events == []


def test_events_is_a_copy() -> None:
    recorder = RunRecorder(Sample().events)
    recorder.events.clear()
    assert len(recorder) == len(Sample().events)


def test_bad_paths_and_events_are_named(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="event 0 is a int, expected an asyncflow TaskEvent"):
        RunRecorder([1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="the report path must be a str or a path, got int"):
        RunRecorder().write_report(3)  # type: ignore[arg-type]


def read_file(name: str) -> None:
    raise ValueError(f"cannot parse {name}")


def test_a_report_of_an_error_naming_an_undecodable_file_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.fsdecode of a name that is not UTF-8 holds lone surrogates, which UTF-8 cannot hold:
    # they are written escaped, and a write that fails leaves the file that was there.
    recorder = RunRecorder()
    with ThreadPoolTaskRunner() as runner, runner.subscribe(recorder):
        fut = runner.submit(read_file, {"name": os.fsdecode(b"caf\xe9.txt")})
        assert isinstance(fut.exception(TIMEOUT), ValueError)
    report = tmp_path / "report.html"
    report.write_text("the previous report")
    recorder.write_report(report)
    assert "caf\\udce9.txt" in report.read_text(encoding="utf-8")
    before = report.read_text()

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        recorder.write_report(report)
    assert report.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # (nothing left beside it)


def test_a_written_report_keeps_the_mode_and_the_link_a_file_had(tmp_path: Path) -> None:
    recorder = RunRecorder(Sample().events)
    fresh = recorder.write_report(tmp_path / "fresh.html")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # (as any new file: not 0600)
    kept = tmp_path / "kept.html"
    kept.write_text("old")
    kept.chmod(0o640)
    recorder.write_report(kept)
    assert kept.stat().st_mode & 0o777 == 0o640
    link = tmp_path / "link.html"
    link.symlink_to(kept)
    recorder.write_report(link)
    assert link.is_symlink()  # written through the link, as before
    assert kept.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.html", "kept.html", "link.html"]


def test_a_report_is_written_in_place_where_it_cannot_be_replaced(tmp_path: Path) -> None:
    recorder = RunRecorder(Sample().events)
    linked = tmp_path / "report.html"
    linked.write_text("old")
    other = tmp_path / "other-name.html"
    os.link(linked, other)  # the same file under another name: both names see the new one
    recorder.write_report(linked)
    assert other.read_text().startswith("<!DOCTYPE html>")
    long = tmp_path / ("r" * 250 + ".html")  # no room for a name beside it
    recorder.write_report(long)
    assert long.read_text().startswith("<!DOCTYPE html>")


def test_a_trace_can_go_to_a_pipe_and_it_stays_one(tmp_path: Path) -> None:
    # A device or a pipe (/dev/null, /dev/stdout) is not a file to replace: written as it
    # comes. (A FIFO of the test's own stands for them: a fault here must not damage /dev.)
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    RunRecorder(Sample().events).write_trace(fifo)
    reader.join(TIMEOUT)
    assert got
    assert got[0].startswith(b"{")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    check_outputs(trace=fifo, report=fifo)  # (a pipe may take both, as /dev/null may)


def test_the_recorder_is_exported() -> None:
    assert {"RunRecorder", "RunSummary", "AttemptSpan"} <= set(asyncflow.__all__)


@task(retries=1)
def flaky(calls: list[int]) -> int:
    calls.append(1)
    if len(calls) == 1:
        raise ConnectionError("first call fails")
    return len(calls)


@task
def broken(x: int) -> int:
    raise ValueError(f"bad {x}")


@task
def after(x: int) -> int:
    return x


@pytest.mark.skipif(
    not hasattr(ThreadPoolTaskRunner, "subscribe"),
    reason="runner.subscribe is not in this build: the recorder has no runner to listen to",
)
def test_a_recorder_subscribed_to_a_runner_records_its_runs() -> None:
    recorder = RunRecorder()
    runner = ThreadPoolTaskRunner(max_workers=2)
    # Looked up by name: this test is written before every build has ``subscribe``.
    subscribe: Callable[[Callable[[TaskEvent], None]], object] = getattr(runner, "subscribe")  # noqa: B009
    subscribe(recorder)
    with runner:
        ok = runner.submit(flaky, {"calls": []})
        bad = runner.submit(broken, {"x": 1})
        skipped = runner.submit(after, {"x": bad})
        assert ok.result(timeout=TIMEOUT) == 2
        skipped.wait(TIMEOUT)
    runs = by_id(recorder)
    assert runs[ok.task_run_id].attempts == 2
    assert runs[bad.task_run_id].state is StateType.FAILED
    assert runs[skipped.task_run_id].state_name == "UpstreamFailed"
    assert runs[skipped.task_run_id].upstream == (bad.task_run_id,)
    spans = [e for e in recorder.chrome_trace()["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == 3  # two attempts of flaky, one of broken
