"""The HTML report: self-contained, escaped, a bar per attempt, a row per run, and it renders."""

from __future__ import annotations

import os
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest
from eventlog import EventLog, Sample
from programs import require

from asyncflow import RunRecorder, StateType
from asyncflow._report import html_report

CHROMIUM_TIMEOUT = 45.0  # seconds for one headless screenshot


class Page(HTMLParser):
    """The parts of the report the tests read: tags with their attributes, table cells, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def with_class(self, tag: str, klass: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and a.get("class") == klass]


def test_the_table_has_a_row_per_run_and_totals_per_state() -> None:
    sample = Sample()
    page = Page(html_report(sample.events))
    body = [row for row in page.rows if row]  # the header row has <th> cells only
    assert len(body) == 8
    by_task = {(row[0], row[1]): row for row in body}
    fetch = next(row for (task, _), row in by_task.items() if task == "fetch")
    # task, run, state, attempts, worker, start, duration, error
    assert fetch[2:5] == ["Completed", "2", "thread w-1"]
    assert fetch[5:7] == ["10 ms", "590 ms"]
    parse = next(row for (task, _), row in by_task.items() if task == "parse")
    assert parse[2] == "Failed"
    assert parse[7] == "ValueError: bad page"
    text = " ".join(" ".join(page.text).split())
    assert "runs: 8" in text
    for total in ("Completed: 3", "Failed: 1", "UpstreamFailed: 1", "Crashed: 1"):
        assert total in text
    assert "Cancelled: 1" in text
    assert "Running: 1" in text


def test_the_timeline_has_a_bar_per_attempt_and_a_marker_per_run_never_started() -> None:
    page = Page(html_report(Sample().events))
    bars = page.with_class("rect", "bar")
    assert len(bars) == 7  # fetch twice, parse, two polls, crunch, slow
    assert len(page.with_class("polygon", "marker")) == 2  # store, waiter
    colors = {bar["fill"] for bar in bars}
    assert {"#f9a825", "#2e7d32", "#c62828", "#6a1b9a", "#1565c0"} <= colors


def test_names_and_errors_are_escaped() -> None:
    log = EventLog()
    evil = "<script>alert('x')</script>"
    run = log.submit(evil, 0.0)
    log.start(run, 0.1, 'thread "<u>"')
    log.finish(run, 0.2, StateType.FAILED, error='ValueError: <img src=x onerror="alert(1)">')
    text = html_report(log.events, title="<i>title</i>")
    assert "<script" not in text  # the report has no script of its own either
    assert "<img" not in text
    assert "<i>" not in text
    assert "<u>" not in text
    assert "thread &quot;&lt;u&gt;&quot;" in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "onerror=&quot;alert(1)&quot;" in text
    page = Page(text)
    assert evil in page.text  # what a reader sees is the name as it is
    row = next(row for row in page.rows if row)
    assert row[0] == evil


def test_control_characters_are_shown_as_escapes() -> None:
    log = EventLog()
    run = log.submit("load\x00", 0.0)
    log.start(run, 0.1, "thread 1")
    log.finish(run, 0.2, StateType.FAILED, error="ValueError: \x1b[31mred\x1b[0m\x85 line\tend")
    text = html_report(log.events)
    controls = [c for c in text if (ord(c) < 0x20 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0]
    assert controls == []
    assert "load\\x00" in text
    assert "ValueError: \\x1b[31mred\\x1b[0m\\x85 line\tend" in text


def test_the_report_is_self_contained() -> None:
    text = html_report(Sample().events)
    assert text.startswith("<!DOCTYPE html>")
    for outside in ("<link", "<script", "src=", "@import", "url(", "https://", "//fonts"):
        assert outside not in text
    assert text.count("http://") == 1  # the SVG namespace, which is never fetched
    assert 'xmlns="http://www.w3.org/2000/svg"' in text


def test_an_empty_report_is_still_a_page() -> None:
    page = Page(html_report([]))
    assert "0 runs" in " ".join(page.text)
    assert page.with_class("rect", "bar") == []


def test_write_report_writes_the_page(tmp_path: Path) -> None:
    recorder = RunRecorder(Sample().events)
    path = recorder.write_report(tmp_path / "report.html", title="nightly")
    assert path.read_text(encoding="utf-8") == recorder.html_report(title="nightly")


def screenshot(browser: str, page: Path, png: Path, profile: Path) -> None:
    """A headless Chromium screenshot of ``page``. Chromium forks helpers: it runs in a session
    of its own, and that whole process group is killed afterwards, whatever happened."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    process = subprocess.Popen(
        [
            browser,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            "--window-size=1200,800",
            page.as_uri(),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT)
        assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone already
        process.kill()
        process.wait()
        # Helpers that left the group (re-parented to this process) go too.
        for child in psutil.Process().children(recursive=True):
            if child.pid not in before:
                child.kill()
        psutil.wait_procs(
            [c for c in psutil.Process().children(recursive=True) if c.pid not in before],
            timeout=5,
        )


@pytest.mark.timeout(90)
def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    browser = require("chromium", "chromium", "chromium-browser")
    page = RunRecorder(Sample().events).write_report(tmp_path / "report.html")
    png = tmp_path / "report.png"
    screenshot(browser, page, png, tmp_path / "profile")
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    assert rgb.size == (1200, 800)
    colors = rgb.getcolors(maxcolors=1 << 20)
    assert colors is not None
    assert len(colors) > 16, "the screenshot is blank"

    # The bars were drawn: the colors of a completed, a failed and a retried attempt show.
    def shows(hex_color: str) -> bool:
        want = tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
        return any(
            count > 50 and all(abs(a - b) <= 3 for a, b in zip(color, want, strict=True))
            for count, color in colors
        )

    for bar in ("#2e7d32", "#c62828", "#f9a825"):
        assert shows(bar), f"no {bar} bar in the screenshot"
