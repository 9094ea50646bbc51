"""The README's examples run and print what their comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (0, "['item 0', 'item 10', 'item 20']"),
        (1, "[0, 2, 4, 6, 8]"),
        (2, "[285, 328350, 332833500]"),
        (3, "14"),
        (4, "[0, 1, 8, 27]"),
        (5, "<html>example.org</html> [8, 9, 8]"),
        (6, "500500"),
        (
            7,
            "[('submitted', None), ('started', 'thread asyncflow-threadpool-0'), "
            "('finished', 'Completed')]\nCounter({'submitted': 3, 'started': 3, 'finished': 3})",
        ),
    ],
)
def test_a_readme_example_prints_what_it_says(index: int, expected: str) -> None:
    code = BLOCKS[index]
    lines = expected.splitlines()  # each printed line, in order
    for line in lines:
        assert line in code  # the comment in the README states the output checked here
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    for line in lines:
        assert any(line in out for out in printed), done.stdout
    assert expected in done.stdout
