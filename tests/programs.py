"""Programs some tests drive (a browser, Graphviz): found on PATH, or the test skips.

On CI (``CI`` set) a missing program fails the test instead: ``.ci/run`` installs them, so a
skip there would hide a test that never ran.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(package: str, *names: str) -> str:
    """The path of the first of ``names`` on PATH; otherwise skip (or fail on CI)."""
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    wanted = " or ".join(names)
    if os.environ.get("CI"):
        pytest.fail(f"{wanted} is not on PATH on CI, where .ci/run installs {package}")
    pytest.skip(f"{wanted} is not on PATH (Debian: apt-get install {package})")
