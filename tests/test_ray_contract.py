"""The contract suite (``test_contract.py``), run again on ``RayTaskRunner``: its tests are
collected here too, with a ``runner`` fixture of this module's, on one shared local cluster
(``ray_cluster``)."""

from __future__ import annotations

import sys

import pytest
import test_contract
from ray_cluster import (  # noqa: F401 - the module's fixtures
    INIT,
    by_value,
    no_child_process_left_behind,
    shared_cluster,
)
from test_contract import hub  # noqa: F401 - a fixture of the suite's tests

from asyncflow import RayTaskRunner, TaskRunner

by_value(sys.modules[__name__])
FOREIGN_THREADS_KEPT = True  # (see conftest: Ray's driver keeps its own)
by_value(test_contract)

# The suite's tests, collected here again.
globals().update({k: v for k, v in vars(test_contract).items() if k.startswith("test_")})


@pytest.fixture
def runner() -> TaskRunner:
    """A fresh, unstarted runner on the module's cluster of two CPUs."""
    return RayTaskRunner(init_kwargs=INIT)
