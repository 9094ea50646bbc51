"""The Chrome trace of recorded task events: structure, one span per attempt, tracks, lanes."""

from __future__ import annotations

import itertools
import json
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from eventlog import EventLog, Sample
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncflow import RunRecorder
from asyncflow._states import StateType
from asyncflow._trace import RUNNER_PID, chrome_trace

Event = dict[str, Any]


def of_phase(trace: dict[str, Any], phase: str) -> list[Event]:
    return [e for e in trace["traceEvents"] if e["ph"] == phase]


def of_run(events: list[Event], run: uuid.UUID) -> list[Event]:
    return [e for e in events if e["args"].get("run_id") == str(run)]


def track_names(trace: dict[str, Any]) -> dict[tuple[int, int], str]:
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in of_phase(trace, "M")
        if e["name"] == "thread_name"
    }


def assert_valid(trace: dict[str, Any]) -> None:
    """What Perfetto and chrome://tracing need of a JSON Object Format trace."""
    assert set(trace) >= {"traceEvents", "displayTimeUnit"}
    assert trace["displayTimeUnit"] in {"ms", "ns"}
    assert json.loads(json.dumps(trace)) == trace  # plain JSON values only
    names = track_names(trace)
    for event in trace["traceEvents"]:
        assert event["ph"] in {"X", "i", "M"}
        assert isinstance(event["name"], str)
        assert isinstance(event["pid"], int)
        assert isinstance(event["tid"], int)
        assert event["pid"] > 0  # pid 0 is the kernel's to Perfetto
        if event["ph"] == "M":
            continue
        assert (event["pid"], event["tid"]) in names, f"unnamed track for {event['name']}"
        assert event["ts"] >= 0
        if event["ph"] == "X":
            assert event["dur"] >= 0
        else:
            assert event["s"] == "t"
    # Spans on one track follow each other: no two of them overlap.
    by_track: dict[tuple[int, int], list[Event]] = defaultdict(list)
    for span in of_phase(trace, "X"):
        by_track[(span["pid"], span["tid"])].append(span)
    for spans in by_track.values():
        spans.sort(key=lambda s: s["ts"])
        for before, after in itertools.pairwise(spans):
            assert before["ts"] + before["dur"] <= after["ts"], (before, after)


def test_the_sample_trace_is_valid_and_names_every_track() -> None:
    sample = Sample()
    trace = chrome_trace(sample.events)
    assert_valid(trace)
    names = set(track_names(trace).values())
    assert names == {"loop", "loop (2)", "thread w-0", "thread w-1", "process 4242"}
    processes = {
        e["pid"]: e["args"]["name"] for e in of_phase(trace, "M") if e["name"] == "process_name"
    }
    assert processes == {RUNNER_PID: "asyncflow runner", 4242: "worker process 4242"}


def test_each_attempt_is_one_span_and_a_retry_is_marked() -> None:
    sample = Sample()
    trace = chrome_trace(sample.events)
    spans = of_run(of_phase(trace, "X"), sample.fetch)
    assert [s["args"]["attempt"] for s in spans] == [1, 2]
    first, second = spans
    assert first["args"]["state"] == "Retrying"
    assert first["args"]["error"] == "ConnectionError: refused"
    assert first["name"] == "fetch (Retrying)"
    assert first["cname"] == "yellow"
    assert (first["ts"], first["dur"]) == (10_000.0, 190_000.0)  # µs from the first event
    assert second["name"] == "fetch #2"
    assert second["args"]["state"] == "Completed"
    assert (second["ts"], second["dur"]) == (400_000.0, 200_000.0)
    # The two attempts ran on different threads: different tracks.
    names = track_names(trace)
    assert names[(first["pid"], first["tid"])] == "thread w-0"
    assert names[(second["pid"], second["tid"])] == "thread w-1"
    # One instant where the first attempt was retried, on its track.
    [instant] = of_run(of_phase(trace, "i"), sample.fetch)
    assert instant["name"] == "fetch retrying"
    assert instant["ts"] == 200_000.0
    assert (instant["pid"], instant["tid"]) == (first["pid"], first["tid"])


def test_failures_and_crashes_are_marked() -> None:
    sample = Sample()
    trace = chrome_trace(sample.events)
    [parse] = of_run(of_phase(trace, "X"), sample.parse)
    assert parse["name"] == "parse (Failed)"
    assert parse["cname"] == "bad"
    assert parse["args"]["error"] == "ValueError: bad page"
    [crunch] = of_run(of_phase(trace, "X"), sample.crunch)
    assert crunch["name"] == "crunch (Crashed)"
    assert crunch["cname"] == "terrible"
    assert crunch["pid"] == 4242  # a worker process is its own process in the trace


def test_runs_that_never_started_are_instants_on_the_loop_track() -> None:
    sample = Sample()
    trace = chrome_trace(sample.events)
    names = track_names(trace)
    for run, state, at in (
        (sample.store, "UpstreamFailed", 810_000.0),
        (sample.waiter, "Cancelled", 460_000.0),
    ):
        assert of_run(of_phase(trace, "X"), run) == []
        [instant] = of_run(of_phase(trace, "i"), run)
        assert instant["args"]["state"] == state
        assert instant["name"].endswith(f"({state})")
        assert instant["ts"] == at
        assert names[(instant["pid"], instant["tid"])] == "loop"


def test_overlapping_coroutines_get_a_lane_each() -> None:
    sample = Sample()
    trace = chrome_trace(sample.events)
    names = track_names(trace)
    lanes = {names[(s["pid"], s["tid"])] for s in of_phase(trace, "X") if s["name"] == "poll"}
    assert lanes == {"loop", "loop (2)"}


def test_a_run_still_running_ends_at_the_last_event() -> None:
    sample = Sample()
    trace = chrome_trace(sample.events)
    [slow] = of_run(of_phase(trace, "X"), sample.slow)
    assert slow["args"]["state"] == "Running"
    assert slow["name"] == "slow (Running)"
    assert slow["ts"] + slow["dur"] == pytest.approx(sample.last * 1e6)


def test_times_count_from_the_first_event() -> None:
    log = EventLog()
    run = log.submit("late", 5.0)  # the origin is the first event, not ORIGIN
    log.start(run, 5.25, "loop")
    log.finish(run, 5.5)
    [span] = of_phase(chrome_trace(log.events), "X")
    assert (span["ts"], span["dur"]) == (250_000.0, 250_000.0)


def test_an_empty_list_gives_an_empty_trace() -> None:
    trace = chrome_trace([])
    assert_valid(trace)
    assert trace["traceEvents"] == []


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match=r"event 1 is a str, expected an asyncflow TaskEvent"):
        chrome_trace([*Sample().events[:1], "started"])
    with pytest.raises(TypeError, match="RunRecorder takes TaskEvent records, got dict"):
        RunRecorder()({"kind": "started"})  # type: ignore[arg-type]


def test_write_trace_writes_the_same_json(tmp_path: Path) -> None:
    recorder = RunRecorder(Sample().events)
    path = recorder.write_trace(tmp_path / "trace.json")
    assert json.loads(path.read_text()) == recorder.chrome_trace()
    with pytest.raises(IsADirectoryError, match="cannot write the trace to"):
        recorder.write_trace(tmp_path)


# Any session the contract allows: each run makes up to three attempts on one of a few workers
# (a worker may run several at once, as the loop does), then ends or stays unfinished.
_attempt = st.tuples(
    st.sampled_from(["loop", "thread a", "thread b", "process 7"]),
    st.floats(0.0, 1.0),  # gap before the attempt starts
    st.floats(0.0, 1.0),  # its duration
)
_run = st.tuples(
    st.lists(_attempt, max_size=3),
    st.sampled_from([StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, None]),
    st.floats(0.0, 2.0),  # submitted at
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_run, max_size=8))
def test_any_session_gives_a_valid_trace_with_one_span_per_attempt(
    runs: list[tuple[list[tuple[str, float, float]], StateType | None, float]],
) -> None:
    log = EventLog()
    started = 0
    for index, (attempts, final, submitted) in enumerate(runs):
        run = log.submit(f"task{index}", submitted)
        now = submitted
        for number, (worker, gap, duration) in enumerate(attempts, 1):
            now += gap
            log.start(run, now, worker)
            started += 1
            now += duration
            if number < len(attempts):
                log.retry(run, now, "OSError: again")
        if final is not None:
            log.finish(run, now, final, error=None if final is StateType.COMPLETED else "E: x")
    trace = chrome_trace(log.sorted_events())
    assert_valid(trace)
    assert len(of_phase(trace, "X")) == started
