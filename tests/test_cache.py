"""Result caching: keys, hits and misses, expiry, and the memory, file and custom stores."""

from __future__ import annotations

import datetime
import errno
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import asyncflow
import asyncflow._cache as cache_module
from asyncflow import (
    CacheEntry,
    CacheStore,
    FileCacheStore,
    Future,
    MemoryCacheStore,
    RunContext,
    ThreadPoolTaskRunner,
    task,
    task_input_hash,
)
from asyncflow._cache import default_store

TIMEOUT = 5.0  # seconds: the longest any single wait in these tests may take


# -- helpers -----------------------------------------------------------------------------------
class Calls:
    """Counts body calls (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


def square(calls: Calls, x: int) -> int:
    calls()
    return x * x


async def asquare(calls: Calls, x: int) -> int:
    calls()
    return x * x


def counted_square(calls: Calls) -> Callable[[int], int]:
    """A body whose only parameter is ``x`` (so ``task_input_hash`` sees only it)."""

    def square_x(x: int) -> int:
        calls()
        return x * x

    return square_x


def by_x(context: RunContext, parameters: dict[str, Any]) -> str:
    """A cache key that ignores the call counter."""
    return f"{context.task_key}:{parameters['x']}"


def fresh_runner(store: CacheStore | None = None) -> ThreadPoolTaskRunner:
    return ThreadPoolTaskRunner(cache_store=store or MemoryCacheStore())


def run(runner: ThreadPoolTaskRunner, t: Any, **params: Any) -> Future[Any]:
    f = runner.submit(t, params)
    f.wait(TIMEOUT)
    assert f.done()
    return f


class RecordingStore(CacheStore):
    """A custom store: a dict, plus a log of every call."""

    def __init__(self) -> None:
        self.entries: dict[str, CacheEntry] = {}
        self.calls: list[tuple[str, str]] = []
        self.expiries: list[float | None] = []

    def get(self, key: str) -> CacheEntry | None:
        self.calls.append(("get", key))
        entry = self.entries.get(key)
        return None if entry is None or entry.expired() else entry

    def set(self, key: str, value: Any, expires_at: float | None) -> None:
        self.calls.append(("set", key))
        self.expiries.append(expires_at)
        self.entries[key] = CacheEntry(value, expires_at)


BODIES = pytest.mark.parametrize("body", [square, asquare], ids=["thread", "coro"])


@pytest.fixture(autouse=True)
def empty_default_store() -> Iterator[None]:
    """Runners without a store of their own share the process-wide one: start each test empty."""
    default_store.clear()
    yield
    default_store.clear()


# -- hits and misses ---------------------------------------------------------------------------
@BODIES
def test_a_cache_hit_skips_the_body(body: Callable[..., Any]) -> None:
    calls = Calls()
    t = task(cache_key=by_x)(body)
    with fresh_runner() as runner:
        first = run(runner, t, calls=calls, x=3)
        second = run(runner, t, calls=Calls(), x=3)
        other = run(runner, t, calls=calls, x=4)
        stats = runner.statistics()
    assert first.result() == second.result() == 9
    assert other.result() == 16
    assert calls.count == 2  # x=3 once, x=4 once
    assert first.state.name == "Completed"
    assert second.state.is_completed()
    assert second.state.name == "Cached"
    assert second.state.data == 9
    assert stats.completed == 3


def test_the_store_outlives_the_session() -> None:
    calls = Calls()
    t = task(cache_key=task_input_hash)(counted_square(calls))
    runner = fresh_runner()
    with runner:
        assert run(runner, t, x=5).result() == 25
    with runner:
        again = run(runner, t, x=5)
    assert again.state.name == "Cached"
    assert calls.count == 1


def test_runs_are_cached_per_task_identity() -> None:
    calls = Calls()

    def cube(x: int) -> int:
        calls()
        return x**3

    with fresh_runner() as runner:
        squared = task(cache_key=task_input_hash)(counted_square(calls))
        assert run(runner, squared, x=2).result() == 4
        assert run(runner, task(cache_key=task_input_hash)(cube), x=2).result() == 8
        assert run(runner, squared, x=2).state.name == "Cached"
    assert calls.count == 2


def test_cache_key_returning_none_means_no_caching() -> None:
    calls = Calls()
    t = task(cache_key=lambda _c, p: None if p["x"] < 0 else f"sq:{p['x']}")(square)
    with fresh_runner() as runner:
        results = [run(runner, t, calls=calls, x=x) for x in (-2, -2, 2, 2)]
    assert [f.result() for f in results] == [4, 4, 4, 4]
    assert [f.state.name for f in results] == ["Completed", "Completed", "Completed", "Cached"]
    assert calls.count == 3


def test_a_failed_run_is_not_cached() -> None:
    attempts: list[int] = []

    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise ValueError("first call fails")
        return x

    t = task(cache_key=task_input_hash)(flaky)
    with fresh_runner() as runner:
        assert isinstance(run(runner, t, x=1).exception(), ValueError)
        assert run(runner, t, x=1).result() == 1
        assert run(runner, t, x=1).state.name == "Cached"
    assert attempts == [1, 1]


def test_cache_key_gets_the_run_context_and_resolved_parameters() -> None:
    seen: list[tuple[RunContext, dict[str, Any]]] = []

    def key(context: RunContext, parameters: dict[str, Any]) -> str:
        seen.append((context, dict(parameters)))
        return "fixed"

    calls = Calls()
    t = task(cache_key=key, name="keyed", tags=["etl"])(square)
    with fresh_runner() as runner:
        up = runner.submit(lambda: 6)
        f = run(runner, t, calls=calls, x=up)
        assert f.result() == 36
    ((context, parameters),) = seen
    assert context.task_name == "keyed"
    assert context.task_run_id == f.task_run_id
    assert context.attempt == 1
    assert context.tags == frozenset({"etl"})
    assert context.task_key == f"{square.__module__}.square"
    assert parameters == {"calls": calls, "x": 6}  # the upstream's result, not its future


def test_a_cache_key_that_raises_or_returns_a_non_string_fails_the_run() -> None:
    def broken(_c: RunContext, _p: dict[str, Any]) -> str:
        raise LookupError("no key today")

    def not_a_string(_c: RunContext, _p: dict[str, Any]) -> Any:
        return 42

    calls = Calls()
    with fresh_runner() as runner:
        raised = run(runner, task(cache_key=broken)(square), calls=calls, x=1)
        wrong = run(runner, task(cache_key=not_a_string, name="wrong")(square), calls=calls, x=1)
    assert isinstance(raised.exception(), LookupError)
    err = wrong.exception()
    assert isinstance(err, TypeError)
    assert "cache_key of task 'wrong' returned 42" in str(err)
    assert calls.count == 0


def test_a_cache_hit_runs_on_completion_hooks_with_the_cached_state() -> None:
    seen: list[str] = []

    def hook(_t: Any, _f: Future[Any], state: asyncflow.State[Any]) -> None:
        seen.append(f"{state.name}={state.data}")

    calls = Calls()
    t = task(cache_key=by_x, on_completion=hook)(square)
    with fresh_runner() as runner:
        run(runner, t, calls=calls, x=7)
        run(runner, t, calls=calls, x=7)
    assert seen == ["Completed=49", "Cached=49"]


# -- task_input_hash ---------------------------------------------------------------------------
def ctx(key: str = "mod.fn") -> RunContext:
    return RunContext("fn", uuid.uuid4(), 1, frozenset(), key)


def test_task_input_hash_is_stable_and_depends_on_task_and_inputs() -> None:
    key = task_input_hash(ctx(), {"a": 1, "b": [1, 2], "c": {"y": 1, "x": 2}})
    assert isinstance(key, str)
    assert key == task_input_hash(ctx(), {"b": [1, 2], "c": {"x": 2, "y": 1}, "a": 1})
    assert key != task_input_hash(ctx("mod.other"), {"a": 1, "b": [1, 2], "c": {"y": 1, "x": 2}})
    assert key != task_input_hash(ctx(), {"a": 2, "b": [1, 2], "c": {"y": 1, "x": 2}})
    assert key != task_input_hash(ctx(), {"z": 1, "b": [1, 2], "c": {"y": 1, "x": 2}})
    # Values that JSON cannot hold are fingerprinted with cloudpickle.
    assert task_input_hash(ctx(), {"s": {1, 2}}) == task_input_hash(ctx(), {"s": {2, 1}})
    assert task_input_hash(ctx(), {"s": {1, 2}}) != task_input_hash(ctx(), {"s": {1, 3}})


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({1: "a"}, {"1": "a"}),
        ((1, 2), [1, 2]),
    ],
    ids=["int-vs-str-keys", "tuple-vs-list"],
)
def test_task_input_hash_tells_apart_inputs_that_differ(one: Any, other: Any) -> None:
    # Both spell the same JSON; a shared key would hand one call the other's result.
    assert task_input_hash(ctx(), {"v": one}) != task_input_hash(ctx(), {"v": other})

    def echo(v: Any) -> str:
        return repr(v)

    t = task(cache_key=task_input_hash)(echo)
    with fresh_runner() as runner:
        assert run(runner, t, v=one).result() == repr(one)
        assert run(runner, t, v=other).result() == repr(other)


def test_task_input_hash_of_an_unhashable_value_fails_the_run_naming_the_parameter() -> None:
    calls = Calls()

    def guarded(lock: Any, n: int) -> None:
        calls()

    t = task(cache_key=task_input_hash, name="guarded")(guarded)
    with fresh_runner() as runner:
        f = run(runner, t, lock=threading.Lock(), n=1)
    err = f.exception()
    assert isinstance(err, TypeError)
    assert "parameter 'lock'" in str(err)
    assert "'guarded'" in str(err)
    assert calls.count == 0


# -- expiry ------------------------------------------------------------------------------------
def test_an_expired_entry_is_a_miss_and_a_live_one_a_hit() -> None:
    store = MemoryCacheStore()
    store.set("sq:2", "stale", time.time() - 1)
    store.set("sq:3", "kept", time.time() + 3600)
    calls = Calls()
    t = task(cache_key=lambda _c, p: f"sq:{p['x']}")(square)
    with fresh_runner(store) as runner:
        expired = run(runner, t, calls=calls, x=2)
        live = run(runner, t, calls=calls, x=3)
    assert expired.result() == 4
    assert expired.state.name == "Completed"
    assert live.result() == "kept"  # straight from the store
    assert live.state.name == "Cached"
    assert calls.count == 1
    entry = store.get("sq:2")
    assert entry is not None
    assert entry.value == 4  # the fresh result replaced the stale one


@pytest.mark.parametrize(
    ("expiration", "seconds"),
    [(60, 60.0), (datetime.timedelta(minutes=2), 120.0), (None, None)],
    ids=["seconds", "timedelta", "never"],
)
def test_cache_expiration_sets_when_the_entry_expires(
    expiration: Any, seconds: float | None
) -> None:
    store = RecordingStore()
    t = task(cache_key=by_x, cache_expiration=expiration)(square)
    with fresh_runner(store) as runner:
        before = time.time()
        run(runner, t, calls=Calls(), x=1)
        after = time.time()
    (expires_at,) = store.expiries
    if seconds is None:
        assert expires_at is None
    else:
        assert expires_at is not None
        assert before + seconds <= expires_at <= after + seconds


def test_cache_expiration_zero_never_hits() -> None:
    calls = Calls()
    t = task(cache_key=by_x, cache_expiration=0)(square)
    with fresh_runner() as runner:
        states = [run(runner, t, calls=calls, x=1).state.name for _ in range(3)]
    assert states == ["Completed"] * 3
    assert calls.count == 3


def test_cache_entry_expired() -> None:
    now = time.time()
    assert not CacheEntry(1, None).expired()
    assert CacheEntry(1, now - 1).expired()
    assert not CacheEntry(1, now + 60).expired()
    assert CacheEntry(1, now).expired(now)


# -- stores ------------------------------------------------------------------------------------
def test_the_default_store_is_shared_by_runners_in_the_process() -> None:
    token = uuid.uuid4().hex  # a key no other test uses

    def key(_c: RunContext, p: dict[str, Any]) -> str:
        return f"{token}:{p['x']}"

    calls = Calls()
    t = task(cache_key=key)(square)
    with ThreadPoolTaskRunner() as one:
        assert run(one, t, calls=calls, x=4).result() == 16
    with ThreadPoolTaskRunner() as two:
        hit = run(two, t, calls=calls, x=4)
    assert hit.state.name == "Cached"
    assert calls.count == 1
    with ThreadPoolTaskRunner(cache_store=MemoryCacheStore()) as own:
        miss = run(own, t, calls=calls, x=4)  # a runner with its own store does not see it
    assert miss.state.name == "Completed"


def test_an_empty_memory_store_given_to_a_runner_is_the_one_it_uses() -> None:
    store = MemoryCacheStore()
    calls = Calls()
    t = task(cache_key=lambda _c, p: f"own:{p['x']}")(square)
    with ThreadPoolTaskRunner(cache_store=store) as runner:
        assert run(runner, t, calls=calls, x=3).result() == 9
    entry = store.get("own:3")
    assert entry is not None, "the result went to another store"
    assert entry.value == 9
    assert default_store.get("own:3") is None


def test_memory_store_basics() -> None:
    store = MemoryCacheStore()
    assert store.get("k") is None
    store.set("k", [1, 2], None)
    entry = store.get("k")
    assert entry is not None
    assert entry.value == [1, 2]
    assert len(store) == 1
    store.set("old", 1, time.time() - 1)
    assert store.get("old") is None
    store.clear()
    assert store.get("k") is None
    assert len(store) == 0


def test_a_custom_store_is_used_for_every_lookup_and_save() -> None:
    store = RecordingStore()
    calls = Calls()
    t = task(cache_key=lambda _c, p: f"k{p['x']}")(square)
    with fresh_runner(store) as runner:
        assert run(runner, t, calls=calls, x=2).result() == 4
        assert run(runner, t, calls=calls, x=2).state.name == "Cached"
    assert store.calls == [("get", "k2"), ("set", "k2"), ("get", "k2")]
    assert calls.count == 1


def test_cache_store_is_an_abstract_contract() -> None:
    with pytest.raises(TypeError):
        CacheStore()  # type: ignore[abstract]

    class Incomplete(CacheStore):
        def get(self, key: str) -> CacheEntry | None:
            return None

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


@pytest.mark.parametrize("bad", ["memory", {}, MemoryCacheStore], ids=repr)
def test_cache_store_must_be_a_cache_store(bad: Any) -> None:
    with pytest.raises(TypeError, match="ThreadPoolTaskRunner: cache_store must be a CacheStore"):
        ThreadPoolTaskRunner(cache_store=bad)


class FailingStore(CacheStore):
    def __init__(self, fail_get: bool, fail_set: bool) -> None:
        self.fail_get = fail_get
        self.fail_set = fail_set

    def get(self, key: str) -> CacheEntry | None:
        if self.fail_get:
            raise ConnectionError("cache server down")
        return None

    def set(self, key: str, value: Any, expires_at: float | None) -> None:
        if self.fail_set:
            raise ConnectionError("cache server down")


def test_a_store_that_cannot_save_is_logged_and_the_run_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = Calls()
    t = task(cache_key=by_x, name="saver")(square)
    with fresh_runner(FailingStore(fail_get=False, fail_set=True)) as runner:
        f = run(runner, t, calls=calls, x=3)
    assert f.result() == 9
    records = [r for r in caplog.records if r.name == "asyncflow" and "'saver'" in r.getMessage()]
    assert records, caplog.text
    assert "could not cache" in records[0].getMessage()


def test_a_store_that_cannot_read_ends_the_run_instead_of_hanging() -> None:
    calls = Calls()
    t = task(cache_key=by_x, name="reader")(square)
    runner = fresh_runner(FailingStore(fail_get=True, fail_set=False))
    with runner:
        f = runner.submit(t, {"calls": calls, "x": 3})
        f.wait(TIMEOUT)
        if not f.done():
            # Let the runner close so the failure shows at once instead of hanging the exit.
            sched = runner._scheduler
            assert sched is not None
            from asyncflow._futures import FAILED

            sched.call_in_loop(lambda: sched._finish(f, FAILED, RuntimeError("never finished")))
            pytest.fail("the run never finished when its cache store raised on get()")
    # Either outcome is fine: treat it as a miss and run the body, or fail with the error.
    if f.state.is_completed():
        assert f.result() == 9
        assert calls.count == 1
    else:
        assert isinstance(f.exception(), ConnectionError)


# -- FileCacheStore ----------------------------------------------------------------------------
def test_file_store_entries_are_seen_by_another_store_on_the_same_directory(
    tmp_path: Path,
) -> None:
    one = FileCacheStore(tmp_path)
    one.set("answer", {"value": 42}, None)
    two = FileCacheStore(tmp_path)
    entry = two.get("answer")
    assert entry is not None
    assert entry.value == {"value": 42}
    assert entry.expires_at is None
    assert two.get("question") is None


def test_file_store_across_runners(tmp_path: Path) -> None:
    calls = Calls()
    t = task(cache_key=task_input_hash)(counted_square(calls))
    with ThreadPoolTaskRunner(cache_store=FileCacheStore(tmp_path)) as runner:
        assert run(runner, t, x=9).result() == 81
    with ThreadPoolTaskRunner(cache_store=FileCacheStore(tmp_path)) as runner:
        hit = run(runner, t, x=9)
    assert hit.state.name == "Cached"
    assert hit.result() == 81
    assert calls.count == 1


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o757])
def test_file_store_refuses_a_directory_others_may_write(tmp_path: Path, mode: int) -> None:
    # Others could write the key, or files signed with it: the values are loaded as code.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(PermissionError, match=f"cache {shared} is open to other users") as caught:
        FileCacheStore(shared)
    assert "chmod go-w" in str(caught.value)
    shared.chmod(0o755)  # readable by others, writable by its user alone: fine
    FileCacheStore(shared).set("k", 1, None)


def test_file_store_refuses_a_key_others_may_read(tmp_path: Path) -> None:
    FileCacheStore(tmp_path)
    (tmp_path / ".key").chmod(0o644)  # others could sign files of their own with it
    with pytest.raises(PermissionError, match=r"\.key is open to other users \(mode 644\)"):
        FileCacheStore(tmp_path)


def test_file_store_refuses_a_directory_of_another_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = os.stat(tmp_path).st_uid
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)  # as if another user made it
    with pytest.raises(PermissionError, match=f"belongs to another user \\(uid {uid}\\)"):
        FileCacheStore(tmp_path)


def test_file_store_key_is_never_seen_before_it_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process opening the cache while the key is written must not read it empty.
    seen: list[bool] = []
    fsync = os.fsync

    def check(fd: int) -> None:
        seen.append((tmp_path / ".key").exists())
        fsync(fd)

    monkeypatch.setattr(os, "fsync", check)
    FileCacheStore(tmp_path)
    assert seen == [False]  # not there while it was written, and made once
    assert len((tmp_path / ".key").read_bytes()) == 32


@pytest.mark.parametrize("errno_", [errno.EPERM, errno.EOPNOTSUPP])
def test_file_store_makes_its_key_where_files_cannot_be_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_: int
) -> None:
    # vfat, exFAT and some network mounts refuse hard links.
    def refuse(*args: object) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "link", refuse)
    FileCacheStore(tmp_path).set("k", 7, None)
    entry = FileCacheStore(tmp_path).get("k")
    assert entry is not None
    assert entry.value == 7
    assert len((tmp_path / ".key").read_bytes()) == 32
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_file_store_waits_for_a_key_another_process_is_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the key cannot be linked into place, another process creates it, then writes it:
    # found empty, it is read again, not called damaged.
    key = tmp_path / ".key"
    key.write_bytes(b"")
    key.chmod(0o600)
    waited: list[float] = []

    def writes_meanwhile(seconds: float) -> None:  # (the other process writes the key now)
        waited.append(seconds)
        key.write_bytes(b"k" * 32)

    monkeypatch.setattr(cache_module, "_pause", writes_meanwhile)
    FileCacheStore(tmp_path).set("k", 1, None)
    assert len(waited) == 1


class _WaitedError(Exception):
    pass


def _no_pause(seconds: float) -> None:
    raise _WaitedError


@pytest.mark.parametrize("kind", ["empty", "short", "long", "symlink", "fifo", "directory"])
def test_file_store_refuses_a_key_it_cannot_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    key = tmp_path / ".key"
    if kind in ("empty", "short", "long"):
        size = {"empty": 0, "short": 5, "long": 33}[kind]
        key.write_bytes(b"k" * (40 if kind == "long" else size))
        key.chmod(0o600)
        damaged = rf"\.key is damaged \({size} bytes, not 32\)"
        monkeypatch.setattr(cache_module, "_pause", _no_pause)
        if kind == "long":  # (it can never become whole: not waited for)
            with pytest.raises(ValueError, match=damaged):
                FileCacheStore(tmp_path)
            return
        with pytest.raises(_WaitedError):  # (another process may be writing it)
            FileCacheStore(tmp_path)
        monkeypatch.setattr(cache_module, "_KEY_WAIT", 0.0)  # no one did
        with pytest.raises(ValueError, match=damaged):
            FileCacheStore(tmp_path)
        return
    if kind == "symlink":
        real = tmp_path / "real-key"
        real.write_bytes(b"k" * 32)
        real.chmod(0o600)
        key.symlink_to(real)
        message = r"\.key is a symbolic link"
    elif kind == "fifo":
        os.mkfifo(key, 0o600)  # (opening one for reading would wait for a writer)
        message = r"\.key is not a regular file"
    else:
        key.mkdir(mode=0o700)
        message = r"\.key is not a regular file"
    before = len(os.listdir("/dev/fd"))
    with pytest.raises(PermissionError, match=message):
        FileCacheStore(tmp_path)
    assert len(os.listdir("/dev/fd")) == before  # (nothing left open)


def test_file_store_expired_entry_is_a_miss(tmp_path: Path) -> None:
    store = FileCacheStore(tmp_path)
    store.set("old", "stale", time.time() - 1)
    store.set("new", "fresh", time.time() + 3600)
    assert store.get("old") is None
    entry = store.get("new")
    assert entry is not None
    assert entry.value == "fresh"


unpickled: list[str] = []


def _record_unpickling(tag: str) -> str:
    unpickled.append(tag)
    return tag


class Payload:
    """Records in ``unpickled`` when it is unpickled: the stand-in for hostile code."""

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return _record_unpickling, ("payload ran",)


def _entry_files(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if not p.name.startswith(".")]


def test_file_store_ignores_a_tampered_file_without_unpickling_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileCacheStore(tmp_path)
    store.set("key", "honest", None)
    (entry_file,) = _entry_files(tmp_path)
    original = entry_file.read_bytes()
    # The same signature in front of a different payload: code that must never run.
    entry_file.write_bytes(original[:32] + cloudpickle.dumps(("key", Payload(), None)))
    unpickled.clear()
    with caplog.at_level(logging.WARNING, logger="asyncflow"):
        assert store.get("key") is None
        assert FileCacheStore(tmp_path).get("key") is None
    assert unpickled == []
    assert any("integrity" in r.getMessage() for r in caplog.records if r.name == "asyncflow")
    # A truncated or emptied file is ignored too.
    entry_file.write_bytes(original[:10])
    assert store.get("key") is None
    entry_file.write_bytes(b"")
    assert store.get("key") is None
    # The untouched bytes are still good: the signature covers exactly the payload.
    entry_file.write_bytes(original)
    entry = store.get("key")
    assert entry is not None
    assert entry.value == "honest"


def test_file_store_signing_key_belongs_to_its_directory(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    one = FileCacheStore(first)
    one.set("key", "from first", None)
    two = FileCacheStore(second)
    two.set("key", "from second", None)
    # A file copied from a directory with another secret is not trusted.
    (src,) = _entry_files(first)
    (dst,) = _entry_files(second)
    dst.write_bytes(src.read_bytes())
    assert two.get("key") is None
    assert stat.S_IMODE((first / ".key").stat().st_mode) == 0o600


def test_file_store_default_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cache-dir"
    monkeypatch.setenv("ASYNCFLOW_CACHE_DIR", str(target))
    store = FileCacheStore()
    assert store.path == target
    assert target.is_dir()
    store.set("k", 1, None)
    assert _entry_files(target)
    entry = FileCacheStore(target).get("k")
    assert entry is not None
    assert entry.value == 1
