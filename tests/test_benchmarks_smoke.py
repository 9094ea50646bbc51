"""The benchmark harness itself, on a tiny made-up workload (the workloads are not run here)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.__main__ import WORKLOADS, _parse
from benchmarks._config import Config
from benchmarks._field import FASTER, Run, Skip, System, WrongAnswerError, measure
from benchmarks._report import markdown_table, write_json


def _fixed(seconds: float) -> contextlib.AbstractContextManager[Run]:
    @contextlib.contextmanager
    def start() -> Iterator[Run]:
        yield lambda: seconds

    return start()


def _wrong() -> contextlib.AbstractContextManager[Run]:
    @contextlib.contextmanager
    def start() -> Iterator[Run]:
        def run() -> float:
            raise WrongAnswerError("task 3 returned 4")

        yield run

    return start()


def test_only_takes_known_workloads_in_any_case() -> None:
    assert _parse(["--only", "w1, B4"]).only == ["W1", "B4"]
    assert {"W1", "W8", "B4", "B7"} <= WORKLOADS.keys()


@pytest.mark.parametrize("bad", ["W9", ",", "B1"])
def test_only_rejects_an_unknown_workload(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["--only", bad])
    assert "--only takes names from W1" in capsys.readouterr().err


def test_rows_ratios_goals_and_json(tmp_path: Path) -> None:
    systems: list[System | Skip] = [
        System("flow", 10, lambda: _fixed(0.001), asyncflow=True),
        System("slow", 5, lambda: _fixed(0.005), goal=FASTER),
        System("broken", 10, _wrong),
        Skip("absent", "absent is not installed"),
    ]
    rows = measure("T tiny", systems, Config(runs=5, warmup=1, quick=True))
    by_name = {row.system: row for row in rows}
    slow = by_name["slow"]
    assert slow.ratio is not None
    assert slow.ratio.median == pytest.approx(0.1)  # 100 µs per task over 1 ms per task
    assert slow.ok is True
    assert "asyncflow 10x faster" in slow.note
    assert by_name["broken"].ok is False
    assert "WRONG: task 3 returned 4" in by_name["broken"].note
    assert by_name["absent"].skipped == "absent is not installed"
    assert by_name["absent"].ok is None

    table = markdown_table(rows)
    assert "| T tiny | slow (asyncflow 10x faster) | 5 | 1.00 ms | " in table
    assert "| **FAIL** |" in table
    assert "| skipped |" in table

    out = tmp_path / "out.json"
    write_json(out, rows, {"runs": 5, "warmup": 1, "quick": True})
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["settings"]["runs"] == 5
    found = {row["system"]: row for row in document["rows"]}
    assert found["slow"]["median"] == pytest.approx(0.001)
    assert found["slow"]["ratio"] == pytest.approx(0.1)
    assert found["slow"]["ok"] is True
    assert found["absent"]["skipped"] == "absent is not installed"
    assert found["flow"]["tasks"] == 10
