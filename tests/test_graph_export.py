"""The task graph as Mermaid and DOT: nodes, edges, marked failures, escaped labels."""

from __future__ import annotations

import html
import re
import subprocess
import uuid

from eventlog import EventLog, Sample
from hypothesis import given, settings
from hypothesis import strategies as st
from programs import require

from asyncflow import StateType
from asyncflow._graphexport import dot, mermaid
from asyncflow._runlog import short_id

MERMAID_NODE = re.compile(r'^    (n\d+|x\d+)\["([^"\n]*)"\]$', re.M)
MERMAID_EDGE = re.compile(r"^    (\w+) --> (\w+)$", re.M)
DOT_NODE = re.compile(r'^    (n\d+|x\d+) \[label="((?:[^"\\]|\\.)*)", (.*)\];$', re.M)
DOT_EDGE = re.compile(r"^    (\w+) -> (\w+);$", re.M)


def mermaid_label(code: str) -> str:
    """A Mermaid label with its entity codes (``#34;``) decoded."""
    return re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), code)


def dot_label(code: str) -> str:
    """A DOT quoted string as Graphviz reads a label: ``\\"``, ``\\\\`` and ``\\n``."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), code)


def mermaid_nodes(text: str) -> dict[str, str]:
    """Node id -> decoded label."""
    return {node: mermaid_label(label) for node, label in MERMAID_NODE.findall(text)}


def mermaid_classes(text: str) -> dict[str, str]:
    """Node id -> class."""
    found: dict[str, str] = {}
    for members, klass in re.findall(r"^    class ([\w,]+) (\w+)$", text, re.M):
        for node in members.split(","):
            found[node] = klass
    return found


def node_of(nodes: dict[str, str], run: uuid.UUID) -> str:
    [node] = [node for node, label in nodes.items() if f"({short_id(run)})" in label]
    return node


def test_mermaid_has_every_run_and_edge() -> None:
    sample = Sample()
    text = mermaid(sample.events)
    assert text.startswith("flowchart TD\n")
    nodes = mermaid_nodes(text)
    assert len(nodes) == 8
    edges = set(MERMAID_EDGE.findall(text))
    fetch, parse, store = (node_of(nodes, r) for r in (sample.fetch, sample.parse, sample.store))
    crunch, waiter = node_of(nodes, sample.crunch), node_of(nodes, sample.waiter)
    assert edges == {(fetch, parse), (parse, store), (crunch, waiter)}
    assert nodes[fetch] == f"fetch ({short_id(sample.fetch)})"


def test_mermaid_marks_runs_by_how_they_ended() -> None:
    sample = Sample()
    text = mermaid(sample.events)
    nodes, classes = mermaid_nodes(text), mermaid_classes(text)
    expected = {
        sample.fetch: "completed",
        sample.parse: "failed",
        sample.store: "skipped",
        sample.crunch: "crashed",
        sample.waiter: "cancelled",
        sample.slow: "running",
    }
    for run, klass in expected.items():
        assert classes[node_of(nodes, run)] == klass
    assert nodes[node_of(nodes, sample.store)].endswith("[UpstreamFailed]")
    for klass in set(expected.values()):
        assert re.search(rf"^    classDef {klass} fill:#\w+,stroke:#\w+", text, re.M)
    assert re.search(r"classDef failed .*stroke-width:2px", text)
    assert re.search(r"classDef skipped .*stroke-dasharray", text)


def test_dot_has_every_run_and_edge_and_marks_failures() -> None:
    sample = Sample()
    text = dot(sample.events)
    assert text.startswith("digraph asyncflow {\n")
    assert text.endswith("}\n")
    nodes = {node: (dot_label(label), attrs) for node, label, attrs in DOT_NODE.findall(text)}
    assert len(nodes) == 8
    labels = {node: label for node, (label, _) in nodes.items()}
    fetch, parse, store = (node_of(labels, r) for r in (sample.fetch, sample.parse, sample.store))
    assert set(DOT_EDGE.findall(text)) == {
        (fetch, parse),
        (parse, store),
        (node_of(labels, sample.crunch), node_of(labels, sample.waiter)),
    }
    parse_attrs = nodes[parse][1]
    assert 'class="failed"' in parse_attrs
    assert 'fillcolor="#ffebee"' in parse_attrs
    assert "penwidth=2" in parse_attrs
    assert 'tooltip="Failed: ValueError: bad page"' in parse_attrs
    assert 'style="rounded,filled,dashed"' in nodes[store][1]
    assert 'class="completed"' in nodes[fetch][1]


def test_an_upstream_not_recorded_is_an_external_node() -> None:
    log = EventLog()
    elsewhere = uuid.uuid4()
    log.submit("child", 0.0, upstream=(elsewhere, elsewhere))
    text = mermaid(log.events)
    nodes = mermaid_nodes(text)
    assert nodes["x1"] == f"external ({short_id(elsewhere)})"
    assert MERMAID_EDGE.findall(text) == [("x1", "n0")]  # one edge, however often named
    assert mermaid_classes(text)["x1"] == "external"
    assert DOT_EDGE.findall(dot(log.events)) == [("x1", "n0")]


NASTY = 'say "hi" <b>&</b> #1; `code` back\\slash\nnew line; a --> b [x] {y} |z|'


def test_labels_are_escaped_for_each_format() -> None:
    log = EventLog()
    run = log.submit(NASTY, 0.0)
    log.start(run, 0.1, "loop")
    log.finish(run, 0.2, StateType.FAILED, error='KeyError: "k"\\')
    expected = f"{' '.join(NASTY.split())} ({short_id(run)}) [Failed]"

    text = mermaid(log.events)
    [(_, code)] = MERMAID_NODE.findall(text)
    assert re.fullmatch(r"(?:[^\W_]|[ _\-.,:/()[\]+=!?@*']|#\d+;)*", code), code
    assert mermaid_label(code) == expected
    assert "-->" not in code
    assert MERMAID_EDGE.findall(text) == []

    text = dot(log.events)
    [(_, code, attrs)] = DOT_NODE.findall(text)
    assert dot_label(code) == f"{NASTY} ({short_id(run)}) [Failed]"
    assert 'tooltip="Failed: KeyError: \\"k\\"\\\\"' in attrs


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_any_task_name_stays_inside_its_label(name: str) -> None:
    log = EventLog()
    run = log.submit(name, 0.0)
    suffix = f" ({short_id(run)}) [Pending]"
    [(_, code)] = MERMAID_NODE.findall(mermaid(log.events))
    assert mermaid_label(code) == " ".join(f"{name}{suffix}".split())
    [(_, code, _)] = DOT_NODE.findall(dot(log.events))
    expected = re.sub(r"[\x00-\x09\x0b-\x1f\x7f]", " ", name.replace("\r", ""))
    assert dot_label(code) == expected + suffix


def test_graphviz_reads_the_dot_text() -> None:
    graphviz = require("graphviz", "dot")
    log = EventLog()
    parent = log.submit(NASTY, 0.0)
    child = log.submit("child", 0.0, upstream=(parent,))
    log.start(parent, 0.1, "loop")
    log.finish(parent, 0.2, StateType.FAILED, error="E: x")
    log.finish(child, 0.3, StateType.FAILED, name="UpstreamFailed", error="E: x")
    done = subprocess.run(
        [graphviz, "-Tsvg"],
        input=dot(log.events),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", done.stdout)]
    first, second = NASTY.split("\n")
    assert first in texts  # "\n" in a label is a line break
    assert f"{second} ({short_id(parent)}) [Failed]" in texts
    assert f"child ({short_id(child)}) [UpstreamFailed]" in texts
    assert done.stdout.count('class="edge"') == 1


def test_the_short_ids_of_the_runs_of_one_process_differ() -> None:
    from asyncflow import ThreadPoolTaskRunner

    with ThreadPoolTaskRunner() as runner:
        futures = [runner.submit(abs, {"x": -i}) for i in range(300)]
        ids = [f.task_run_id for f in futures]
    assert len({short_id(run_id) for run_id in ids}) == len(ids)
    assert all(short_id(run_id) in run_id.hex for run_id in ids)  # a part of the id: greppable
