"""The live progress display, fed hand-made events (no runner involved)."""

from __future__ import annotations

import io
import sys
import uuid

import pytest
from rich.console import Console
from rich.text import Text

from asyncflow._events import EventKind, TaskEvent
from asyncflow._progress import ProgressDisplay
from asyncflow._states import StateType


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def event(
    kind: EventKind, name: str, run_id: uuid.UUID, state: StateType | None = None
) -> TaskEvent:
    return TaskEvent(kind=kind, task_name=name, run_id=run_id, timestamp=0.0, state=state)


def run_events(name: str, *kinds_and_states: tuple[EventKind, StateType | None]) -> list[TaskEvent]:
    run_id = uuid.uuid4()
    return [event(kind, name, run_id, state) for kind, state in kinds_and_states]


def terminal(width: int = 120) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width), out


def sample_events() -> list[TaskEvent]:
    """fetch: 2 done (one after a retry), 1 running; parse: 1 failed, 1 crashed, 1 cancelled."""
    return [
        *run_events("fetch", ("submitted", None), ("started", None)),  # still running
        *run_events(
            "fetch", ("submitted", None), ("started", None), ("finished", StateType.COMPLETED)
        ),
        *run_events(
            "fetch",
            ("submitted", None),
            ("started", None),
            ("retrying", StateType.RETRYING),
            ("started", None),
            ("finished", StateType.COMPLETED),
        ),
        *run_events(
            "parse", ("submitted", None), ("started", None), ("finished", StateType.FAILED)
        ),
        *run_events(
            "parse", ("submitted", None), ("started", None), ("finished", StateType.CRASHED)
        ),
        # Cancelled while waiting: no "started" event, so it never counted as running.
        *run_events("parse", ("submitted", None), ("cancelled", StateType.CANCELLED)),
    ]


def test_counts_follow_the_events() -> None:
    console, _ = terminal()
    display = ProgressDisplay(console, clock=FakeClock())
    assert display.enabled
    for e in sample_events():
        display(e)
    c = display.counts()
    assert (c.submitted, c.running, c.done, c.failed, c.cancelled, c.retries) == (6, 1, 2, 2, 1, 1)
    assert c.finished == 5
    per_task = display.task_counts()
    assert list(per_task) == ["fetch", "parse"]
    fetch, parse = per_task["fetch"], per_task["parse"]
    assert (fetch.submitted, fetch.running, fetch.done, fetch.failed) == (3, 1, 2, 0)
    assert (parse.submitted, parse.running, parse.done, parse.failed) == (3, 0, 0, 2)
    assert parse.cancelled == 1


def test_rate_is_finished_runs_per_second_since_start() -> None:
    clock = FakeClock(100.0)
    console, _ = terminal()
    display = ProgressDisplay(console, clock=clock)
    for e in sample_events():
        display(e)  # the first event starts the clock, at 100.0
    clock.now = 102.0
    c = display.counts()
    assert c.elapsed == pytest.approx(2.0)
    assert c.rate == pytest.approx(5 / 2.0)  # 5 finished (done, failed, cancelled) in 2 s
    clock.now = 110.0
    assert display.counts().rate == pytest.approx(5 / 10.0)


def test_start_and_stop_print_a_final_line_with_the_counts_and_rate() -> None:
    clock = FakeClock(50.0)
    console, out = terminal()
    display = ProgressDisplay(console, title="nightly", clock=clock, refresh_per_second=20)
    with display:  # the clock of the rate starts here
        for e in sample_events():
            display(e)
        clock.now = 54.0
    clock.now = 99.0  # after stop() the elapsed time no longer grows
    assert display.counts().elapsed == pytest.approx(4.0)
    last_line = out.getvalue().strip().splitlines()[-1]
    assert "nightly: 6 submitted, 2 done, 2 failed, 1 cancelled, 1 running, 1 retries" in last_line
    assert "in 4.00 s (1.2 runs/s)" in last_line


def test_live_view_has_a_row_per_task() -> None:
    console, out = terminal()
    display = ProgressDisplay(console, clock=FakeClock())
    for e in sample_events():
        display(e)
    console.print(display)  # what the live display draws on each refresh
    text = Text.from_ansi(out.getvalue()).plain
    assert "6 submitted · 1 running · 2 done · 2 failed" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["fetch"] == ["3", "1", "2", "0"]
    assert rows["parse"] == ["3", "0", "0", "2"]


def test_many_task_names_are_summed_up_in_one_line() -> None:
    console, out = terminal()
    display = ProgressDisplay(console, clock=FakeClock())
    for i in range(20):
        for e in run_events(f"task{i}", ("submitted", None)):
            display(e)
    console.print(display)
    text = Text.from_ansi(out.getvalue()).plain
    assert "task11" in text
    assert "task12" not in text
    assert "+8 more" in text


def test_off_when_the_console_is_not_a_terminal() -> None:
    out = io.StringIO()
    display = ProgressDisplay(Console(file=out, force_terminal=False), clock=FakeClock())
    assert not display.enabled
    with display:
        for e in sample_events():
            display(e)
    assert display.counts().submitted == 0  # events are ignored: nothing is kept
    assert out.getvalue() == ""


def test_off_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("rich", "rich.console", "rich.live", "rich.table", "rich.text"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    display = ProgressDisplay()
    assert not display.enabled
    assert display.console is None
    with display:
        for e in sample_events():
            display(e)
    assert display.counts().submitted == 0


def test_task_and_flow_names_with_brackets_are_shown_as_they_are() -> None:
    # Rich reads "[...]" as markup: a name is text, not markup.
    clock = FakeClock(50.0)
    console, out = terminal()
    display = ProgressDisplay(console, title="run[/b]:100:", clock=clock)
    with display:
        for kind, state in (("submitted", None), ("started", None)):
            display(event(kind, "load[/b]", RUN, state))  # type: ignore[arg-type]
        display(event("submitted", "fetch[eu]", RUN2, None))
        console.print(display)  # what the live display draws on each refresh
    text = Text.from_ansi(out.getvalue()).plain
    assert "load[/b]" in text
    assert "fetch[eu]" in text
    assert text.strip().splitlines()[-1].startswith("run[/b]:100:: ")  # (no emoji code)


RUN = uuid.uuid4()
RUN2 = uuid.uuid4()
