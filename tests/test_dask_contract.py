"""The contract suite (``test_contract.py``), run again on ``DaskTaskRunner``: its tests are
collected here too, with a ``runner`` fixture of this module's, a fresh in-process cluster of
two single-threaded workers per test (Dask pickles what it sends them all the same)."""

from __future__ import annotations

import pytest
import test_contract
from test_contract import hub  # noqa: F401 - a fixture of the suite's tests
from test_dask import IN_PROCESS, _dask_started  # noqa: F401 - Dask's threads, started once

from asyncflow import DaskTaskRunner, TaskRunner

# The suite's tests, collected here again.
globals().update({k: v for k, v in vars(test_contract).items() if k.startswith("test_")})


@pytest.fixture
def runner() -> TaskRunner:
    """A fresh, unstarted runner with two workers."""
    return DaskTaskRunner(cluster_kwargs=IN_PROCESS)
