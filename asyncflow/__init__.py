"""asyncflow: asyncio-native task orchestration, no server.

One event-loop scheduler owns the dependency graph of submitted tasks; coroutines run on the
loop, sync bodies in worker threads; futures work with ``await`` and with ``.result()``.
"""

from __future__ import annotations

from . import exceptions as exceptions
from ._annotations import allow_failure as allow_failure
from ._annotations import quote as quote
from ._annotations import unmapped as unmapped
from ._cache import CacheEntry as CacheEntry
from ._cache import CacheStore as CacheStore
from ._cache import FileCacheStore as FileCacheStore
from ._cache import MemoryCacheStore as MemoryCacheStore
from ._cache import task_input_hash as task_input_hash
from ._context import RunContext as RunContext
from ._context import get_run_context as get_run_context
from ._dask import DaskTaskRunner as DaskTaskRunner
from ._events import EventStream as EventStream
from ._events import Subscription as Subscription
from ._events import TaskEvent as TaskEvent
from ._flow import Flow as Flow
from ._flow import flow as flow
from ._futures import Future as Future
from ._futures import FutureList as FutureList
from ._logging import get_run_logger as get_run_logger
from ._options import exponential_backoff as exponential_backoff
from ._progress import ProgressDisplay as ProgressDisplay
from ._ray import RayTaskRunner as RayTaskRunner
from ._recorder import RunRecorder as RunRecorder
from ._resolve import resolve_futures_to_results as resolve_futures_to_results
from ._resolve import resolve_futures_to_states as resolve_futures_to_states
from ._runlog import AttemptSpan as AttemptSpan
from ._runlog import RunSummary as RunSummary
from ._runners import ProcessPoolTaskRunner as ProcessPoolTaskRunner
from ._runners import TaskRunner as TaskRunner
from ._runners import ThreadPoolTaskRunner as ThreadPoolTaskRunner
from ._runners import wait_for_room as wait_for_room
from ._settings import Settings as Settings
from ._settings import get_settings as get_settings
from ._states import State as State
from ._states import StateType as StateType
from ._stats import RunnerStatistics as RunnerStatistics
from ._task import Task as Task
from ._task import task as task
from ._waiting import DoneAndNotDone as DoneAndNotDone
from ._waiting import as_completed as as_completed
from ._waiting import as_completed_async as as_completed_async
from ._waiting import wait as wait
from ._waiting import wait_async as wait_async

__version__ = "0.1.0"

__all__ = (
    "AttemptSpan",
    "CacheEntry",
    "CacheStore",
    "DaskTaskRunner",
    "DoneAndNotDone",
    "EventStream",
    "FileCacheStore",
    "Flow",
    "Future",
    "FutureList",
    "MemoryCacheStore",
    "ProcessPoolTaskRunner",
    "ProgressDisplay",
    "RayTaskRunner",
    "RunContext",
    "RunRecorder",
    "RunSummary",
    "RunnerStatistics",
    "Settings",
    "State",
    "StateType",
    "Subscription",
    "Task",
    "TaskEvent",
    "TaskRunner",
    "ThreadPoolTaskRunner",
    "allow_failure",
    "as_completed",
    "as_completed_async",
    "exceptions",
    "exponential_backoff",
    "flow",
    "get_run_context",
    "get_run_logger",
    "get_settings",
    "quote",
    "resolve_futures_to_results",
    "resolve_futures_to_states",
    "task",
    "task_input_hash",
    "unmapped",
    "wait",
    "wait_async",
    "wait_for_room",
)
