"""Task events as one self-contained HTML page: a timeline and a table of runs.

The page needs nothing but itself: inline CSS and SVG, no script, no font or file from outside,
so it opens the same from a CI artifact, a mail attachment or a file on disk. The timeline has
one row per run, one bar per attempt colored by how it ended, and a diamond where a run that
never started was decided. Every text taken from the events (task names, errors, workers) is
escaped.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable

from ._runlog import RunSummary, check_events, run_class, runs_of, short_id, time_origin

__all__ = ("html_report",)

_LABEL_WIDTH = 260  # px of the run labels left of the timeline
_CHART_WIDTH = 880  # px of the timeline itself
_ROW = 22  # px per run
_AXIS = 28  # px of the time axis above the rows
_LABEL_CHARS = 34  # longer task names are cut in the timeline (the table shows them whole)
_RIGHT = 40  # px right of the timeline, so the last tick's label fits
_TICKS = 6  # about this many ticks on the time axis
_MS = 1e-3

# Colors by run class (see ``run_class``) and by attempt outcome.
_COLORS = {
    "completed": "#2e7d32",
    "retrying": "#f9a825",
    "failed": "#c62828",
    "crashed": "#6a1b9a",
    "cancelled": "#757575",
    "skipped": "#b0bec5",
    "running": "#1565c0",
    "pending": "#e0e0e0",
}

_CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #212121; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #616161; margin: 0 0 12px; }
.totals { display: flex; flex-wrap: wrap; gap: 8px; padding: 0; margin: 0; list-style: none; }
.totals li { padding: 4px 10px; border-radius: 12px; background: #f5f5f5; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: baseline; }
.chart { overflow-x: auto; border: 1px solid #e0e0e0; border-radius: 4px; }
svg text { font: 12px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #212121; }
svg .axis text { fill: #757575; }
svg .grid { stroke: #eeeeee; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; margin: 6px 0 0; color: #616161;
          font-size: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eeeeee;
         vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.error { font-family: ui-monospace, monospace; white-space: pre-wrap; word-break: break-word;
           color: #b71c1c; }
"""


_LEGEND = (
    '<p class="legend">'
    + "".join(
        f'<span><span class="swatch" style="background:{_COLORS[key]}"></span>{text}</span>'
        for key, text in (
            ("completed", "attempt completed"),
            ("retrying", "attempt retried"),
            ("failed", "failed"),
            ("crashed", "crashed"),
            ("cancelled", "cancelled"),
            ("running", "still running"),
            ("skipped", "never started (diamond)"),
        )
    )
    + "</p>"
)


# Control characters (but tab, line feed and carriage return) are not allowed in HTML text: a
# terminal's color codes in an error message, a NUL in a task name. Each is shown as its
# Python escape (``\x1b``), visibly, instead.
_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), *range(0x7F, 0xA0))
    if chr(code) not in "\t\n\r"
}


def _e(text: object) -> str:
    return html.escape(str(text).translate(_CONTROLS), quote=True)


def _seconds(value: float | None) -> str:
    """A duration for people: ``850 µs``, ``12.3 ms``, ``4.56 s``; an empty cell for None."""
    if value is None:
        return ""
    if value == 0:
        return "0"
    if value < _MS:
        return f"{value * 1e6:.0f} µs"
    if value < 1.0:
        return f"{value * 1e3:.1f}".removesuffix(".0") + " ms"
    return f"{value:.2f}".removesuffix(".00") + " s"


def _tick_step(total: float) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about six ticks over ``total``."""
    step = 10.0**-6
    while total / step > _TICKS:
        for factor in (2.0, 2.5, 2.0):
            step *= factor
            if total / step <= _TICKS:
                break
    return step


def _axis(total: float, bottom: float) -> list[str]:
    """Ticks and grid lines from the top of the chart down to ``bottom``."""
    parts = ['<g class="axis">']
    step = _tick_step(total)
    tick = 0.0
    while tick <= total * 1.0001:
        x = _LABEL_WIDTH + tick / total * _CHART_WIDTH
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{_AXIS - 6}" x2="{x:.1f}" '
            f'y2="{bottom}"/>'
            f'<text x="{x:.1f}" y="{_AXIS - 10}" text-anchor="middle">{_e(_seconds(tick))}'
            "</text>"
        )
        tick += step
    parts.append("</g>")
    return parts


def _timeline(runs: list[RunSummary], origin: float, horizon: float) -> str:
    total = max(horizon - origin, 1e-6)
    height = _AXIS + _ROW * max(len(runs), 1) + 8
    width = _LABEL_WIDTH + _CHART_WIDTH + _RIGHT
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'style="display:block;width:100%;min-width:720px;height:auto" role="img" '
        'aria-label="timeline of task runs">'
    ]
    out.extend(_axis(total, height - 8))

    def x_of(t: float) -> float:
        return _LABEL_WIDTH + (t - origin) / total * _CHART_WIDTH

    for row, run in enumerate(runs):
        y = _AXIS + row * _ROW
        label = run.task_name
        if len(label) > _LABEL_CHARS:
            label = label[: _LABEL_CHARS - 1] + "…"
        out.append(
            f'<g class="run" data-run="{_e(run.run_id)}" data-state="{run_class(run)}">'
            f'<rect class="row" x="0" y="{y}" width="{width}" height="{_ROW}" '
            f'fill="{"#f7f7f7" if row % 2 else "#ffffff"}"/>'
            f'<text x="8" y="{y + 15}">{_e(label)} '
            f'<tspan fill="#9e9e9e">{short_id(run.run_id)}</tspan></text>'
        )
        for span in run.spans:
            x1 = x_of(span.start)
            bar = max(x_of(span.end) - x1, 2.0)
            color = _COLORS.get(span.state.value.lower(), _COLORS["failed"])
            tip = f"{span.task_name} attempt {span.attempt}: {span.outcome}"
            tip += f", {_seconds(span.end - span.start)} on {span.worker or '?'}"
            if span.error:
                tip += f"\n{span.error}"
            out.append(
                f'<rect class="bar" x="{x1:.1f}" y="{y + 4}" width="{bar:.1f}" '
                f'height="{_ROW - 8}" rx="2" fill="{color}"><title>{_e(tip)}</title></rect>'
            )
        if not run.spans and run.end is not None:
            cx, cy = x_of(run.end), y + _ROW / 2
            tip = f"{run.task_name}: {run.state_name} (never started)"
            if run.error:
                tip += f"\n{run.error}"
            out.append(
                f'<polygon class="marker" points="{cx:.1f},{cy - 6:.1f} {cx + 6:.1f},{cy:.1f} '
                f'{cx:.1f},{cy + 6:.1f} {cx - 6:.1f},{cy:.1f}" '
                f'fill="{_COLORS[run_class(run)]}"><title>{_e(tip)}</title></polygon>'
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _table(runs: list[RunSummary], origin: float) -> str:
    rows = [
        "<table><thead><tr><th>task</th><th>run</th><th>state</th><th>attempts</th>"
        "<th>worker</th><th>start</th><th>duration</th><th>error</th></tr></thead><tbody>"
    ]
    for run in runs:
        klass = run_class(run)
        rows.append(
            f'<tr data-state="{klass}"><td>{_e(run.task_name)}</td>'
            f"<td><code>{short_id(run.run_id)}</code></td>"
            f'<td><span class="swatch" style="background:{_COLORS[klass]}"></span>'
            f"{_e(run.state_name)}</td>"
            f'<td class="num">{run.attempts}</td><td>{_e(run.worker or "")}</td>'
            f'<td class="num">{_seconds(None if run.start is None else run.start - origin)}</td>'
            f'<td class="num">{_seconds(run.duration)}</td>'
            f'<td class="error">{_e(run.error or "")}</td></tr>'
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _totals(runs: list[RunSummary]) -> str:
    counts = Counter(run.state_name for run in runs)
    classes = {run.state_name: run_class(run) for run in runs}
    items = [
        f'<li data-state-name="{_e(name)}"><span class="swatch" '
        f'style="background:{_COLORS[classes[name]]}"></span>{_e(name)}: <b>{count}</b></li>'
        for name, count in sorted(counts.items())
    ]
    return f'<ul class="totals"><li>runs: <b>{len(runs)}</b></li>{"".join(items)}</ul>'


def html_report(events: Iterable[object], *, title: str = "asyncflow run report") -> str:
    """The HTML page of ``events`` (a list of ``TaskEvent``) as one string."""
    checked = check_events(events)
    runs = runs_of(checked)
    origin = time_origin(checked)
    horizon = max((e.timestamp for e in checked), default=origin)
    # Rows in the order runs started; one that never started where it was decided.
    runs_in_time = sorted(
        runs, key=lambda r: next(t for t in (r.start, r.end, horizon) if t is not None)
    )
    span = _seconds(horizon - origin) or "0 µs"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="meta">{len(runs)} runs over {span}</p>'
        f"{_totals(runs)}"
        f'<h2>Timeline</h2><div class="chart">{_timeline(runs_in_time, origin, horizon)}</div>'
        f"{_LEGEND}"
        f"<h2>Runs</h2>{_table(runs_in_time, origin)}"
        "</body></html>\n"
    )
