"""The task graph of recorded runs as Mermaid and Graphviz DOT text.

Nodes are runs (label: the task name and the run id's last 8 hex digits, so two runs of one
task stay apart); edges go from each upstream run to the run that waited on it, as recorded on
``submitted`` events. An upstream run that is not in the events (a run of another runner, or one
submitted before recording began) is drawn as an ``external`` node. Runs are styled by how they
ended (see ``run_class``): failed, crashed, cancelled and skipped (never started because an
input failed) ones stand out.

Labels are escaped for each format: Mermaid gets entity codes (``#34;``) for every character
that could end a quoted label or start markup; DOT gets ``\\"`` and ``\\\\`` inside its quoted
strings.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from ._runlog import RunSummary, run_class, runs_of, short_id

__all__ = ("dot", "mermaid")

# (fill, stroke, text) colors by run class; "external" for upstream runs not in the events.
_STYLES = {
    "completed": ("#e8f5e9", "#2e7d32", "#1b5e20"),
    "failed": ("#ffebee", "#c62828", "#b71c1c"),
    "crashed": ("#f3e5f5", "#6a1b9a", "#4a148c"),
    "cancelled": ("#eeeeee", "#757575", "#424242"),
    "skipped": ("#fafafa", "#9e9e9e", "#757575"),
    "running": ("#e3f2fd", "#1565c0", "#0d47a1"),
    "retrying": ("#fff8e1", "#f9a825", "#6d4c00"),
    "pending": ("#ffffff", "#bdbdbd", "#616161"),
    "external": ("#ffffff", "#9e9e9e", "#616161"),
}
_DASHED = frozenset({"skipped", "cancelled", "pending", "external"})
_MERMAID_SAFE = frozenset(" _-.,:/()[]+=!?@*'")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class _Graph:
    """Node ids, labels and classes, and the edges, shared by both formats."""

    def __init__(self, runs: list[RunSummary]) -> None:
        self.ids: dict[uuid.UUID, str] = {}
        self.nodes: list[tuple[str, str, str, str]] = []  # id, label, class, tooltip
        for run in runs:
            node = f"n{len(self.ids)}"
            self.ids[run.run_id] = node
            klass = run_class(run)
            label = f"{run.task_name} ({short_id(run.run_id)})"
            if klass != "completed":
                label += f" [{run.state_name}]"
            tooltip = run.state_name + (f": {run.error}" if run.error else "")
            self.nodes.append((node, label, klass, tooltip))
        self.edges: list[tuple[str, str]] = []
        for run in runs:
            for upstream in dict.fromkeys(run.upstream):  # one edge per input run
                source = self.ids.get(upstream)
                if source is None:
                    source = self.ids[upstream] = f"x{len(self.ids)}"
                    label = f"external ({short_id(upstream)})"
                    self.nodes.append((source, label, "external", "not recorded"))
                self.edges.append((source, self.ids[run.run_id]))


def _mermaid_text(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label: entity codes for anything but plain text."""
    return "".join(
        ch if ch.isalnum() or ch in _MERMAID_SAFE else f"#{ord(ch)};"
        for ch in " ".join(text.split())  # no line breaks or tabs inside a label
    )


def mermaid(events: Iterable[object]) -> str:
    """The task graph of ``events`` (a list of ``TaskEvent``) as a Mermaid flowchart."""
    graph = _Graph(runs_of(events))
    lines = ["flowchart TD"]
    lines.extend(f'    {node}["{_mermaid_text(label)}"]' for node, label, _, _ in graph.nodes)
    lines.extend(f"    {source} --> {target}" for source, target in graph.edges)
    used = sorted({klass for _, _, klass, _ in graph.nodes})
    for klass in used:
        fill, stroke, color = _STYLES[klass]
        dash = ",stroke-dasharray:4 3" if klass in _DASHED else ""
        width = ",stroke-width:2px" if klass in {"failed", "crashed"} else ""
        lines.append(f"    classDef {klass} fill:{fill},stroke:{stroke},color:{color}{dash}{width}")
    for klass in used:
        members = ",".join(node for node, _, k, _ in graph.nodes if k == klass)
        lines.append(f"    class {members} {klass}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    """``text`` inside a quoted DOT string: backslashes and quotes escaped, line breaks as
    ``\\n``, other control characters as spaces."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "")
    text = _CONTROL.sub(" ", text)
    return "\\n".join(text.split("\n"))


def dot(events: Iterable[object]) -> str:
    """The task graph of ``events`` (a list of ``TaskEvent``) as a Graphviz digraph."""
    graph = _Graph(runs_of(events))
    lines = [
        "digraph asyncflow {",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for node, label, klass, tooltip in graph.nodes:
        fill, stroke, color = _STYLES[klass]
        style = "rounded,filled,dashed" if klass in _DASHED else "rounded,filled"
        width = ", penwidth=2" if klass in {"failed", "crashed"} else ""
        lines.append(
            f'    {node} [label="{_dot_text(label)}", tooltip="{_dot_text(tooltip)}", '
            f'class="{klass}", style="{style}", fillcolor="{fill}", color="{stroke}", '
            f'fontcolor="{color}"{width}];'
        )
    lines.extend(f"    {source} -> {target};" for source, target in graph.edges)
    lines.append("}")
    return "\n".join(lines) + "\n"
