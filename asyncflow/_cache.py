"""Result caching: cache keys, and the stores that keep results between runs."""

from __future__ import annotations

import abc
import errno
import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from ._context import RunContext
from ._error_text import message_of

__all__ = ("CacheEntry", "CacheStore", "FileCacheStore", "MemoryCacheStore", "task_input_hash")

logger = logging.getLogger("asyncflow")


_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_MAX_DEPTH = 64


def _canon(value: Any, out: list[bytes], depth: int = 0) -> bool:
    """Append a type-preserving encoding of plain data to ``out``; False if ``value`` is not
    plain data (then the whole value is pickled instead)."""
    cls = type(value)
    tag = f"{cls.__module__}.{cls.__qualname__}:".encode()
    if isinstance(value, _SCALARS):
        # Subclasses (str enums, ...) keep their own type name, so they never collide.
        out.append(tag + repr(value).encode() + b";")
        return True
    if depth >= _MAX_DEPTH:  # deep or cyclic data: pickled whole instead
        return False
    if isinstance(value, (list, tuple)):
        out.append(tag + b"[")
        for item in value:
            if not _canon(item, out, depth + 1):
                return False
        out.append(b"]")
        return True
    if isinstance(value, (dict, set, frozenset)):
        parts: list[bytes] = []
        items = value.items() if isinstance(value, dict) else ((v, None) for v in value)
        for key, item in items:
            one: list[bytes] = []
            if not _canon(key, one, depth + 1) or not _canon(item, one, depth + 1):
                return False
            parts.append(b"".join(one))
        out.append(tag + b"{" + b"".join(sorted(parts)) + b"}")  # order does not matter
        return True
    return False


def _fingerprint(name: str, value: Any, task_name: str) -> bytes:
    out: list[bytes] = []
    if _canon(value, out):
        return b"".join(out)
    try:
        pickled: bytes = cloudpickle.dumps(value)
    except Exception as exc:
        raise TypeError(
            f"task_input_hash: parameter {name!r} of task {task_name!r} "
            f"({type(value).__name__}) cannot be hashed ({message_of(exc)}); give the task a "
            "cache_key function that handles it"
        ) from None
    return b"pickle:" + pickled


def task_input_hash(context: RunContext, parameters: dict[str, Any]) -> str:
    """A cache key from the task's identity and its (resolved) parameters.

    Plain data (numbers, strings, bytes, lists, tuples, dicts, sets) is encoded with its types,
    so ``[1, 2]`` and ``(1, 2)`` or ``{1: x}`` and ``{"1": x}`` never share a key; anything else
    is fingerprinted with cloudpickle; a value neither can encode raises ``TypeError`` naming
    the parameter. The task is identified by its function's module and qualified name: two
    closures made by one factory share keys, so give those a ``cache_key`` that includes what
    they capture.
    """
    digest = hashlib.sha256(context.task_key.encode())
    for name in sorted(parameters):
        digest.update(b"\0" + name.encode() + b"\0")
        digest.update(_fingerprint(name, parameters[name], context.task_name))
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    value: Any
    expires_at: float | None  # wall-clock time.time(), None: never

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


class CacheStore(abc.ABC):
    """Where cached results live. Implementations must be safe to call from any thread."""

    @abc.abstractmethod
    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if there is one that has not expired."""

    @abc.abstractmethod
    def set(self, key: str, value: Any, expires_at: float | None) -> None:
        """Keep ``value`` under ``key`` until ``expires_at`` (None: no expiry)."""


class MemoryCacheStore(CacheStore):
    """Results kept in this process's memory (the default store, shared by all runners)."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expired():
                del self._entries[key]
                return None
            return entry

    def set(self, key: str, value: Any, expires_at: float | None) -> None:
        with self._lock:
            self._entries[key] = CacheEntry(value, expires_at)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


default_store = MemoryCacheStore()


def _check_private(path: Path, st: os.stat_result, others: int, fix: str) -> None:
    """Refuse ``path`` unless it is this user's own and has none of the ``others`` mode bits."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:  # pragma: no cover - not POSIX: no owner or mode bits to check
        return
    if st.st_uid != getuid():
        raise PermissionError(
            f"cache {path} belongs to another user (uid {st.st_uid}); cached values are "
            "loaded as code, so the cache must be your own: choose another directory"
        )
    if st.st_mode & others:
        raise PermissionError(
            f"cache {path} is open to other users (mode {st.st_mode & 0o777:o}); cached "
            f"values are loaded as code, so the cache must be private: run `{fix} {path}`"
        )


_KEY_BYTES = 32


def _read_secret(key_file: Path) -> bytes | None:
    """The key in ``key_file``, None if there is none yet; refused unless it is a private
    file of this user's, whole. One that is short may be being written by another process
    (where it cannot be linked into place, see ``_create_key``): it is read again for up to
    ``_KEY_WAIT`` seconds before it is called damaged."""
    deadline = time.monotonic() + _KEY_WAIT
    while True:
        secret = _read_key_file(key_file)
        if secret is None or len(secret) == _KEY_BYTES:
            return secret
        if len(secret) > _KEY_BYTES or time.monotonic() >= deadline:  # (one too long stays so)
            raise ValueError(
                f"cache key {key_file} is damaged ({len(secret)} bytes, not {_KEY_BYTES}): "
                "remove it (the entries it signed are then ignored)"
            )
        _pause(_KEY_WAIT / 50)


_KEY_WAIT = 1.0  # seconds a short key may take to be written whole
_pause = time.sleep


def _read_key_file(key_file: Path) -> bytes | None:
    """What ``key_file`` holds (at most one byte past a key), None if there is none."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(key_file, flags)  # (not blocking: a FIFO there must not hang this)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise PermissionError(
            f"cache key {key_file} is a symbolic link; the key must be a file of its own: "
            "remove the link (the entries it signed are then ignored)"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # (a FIFO, a directory...)
            raise PermissionError(
                f"cache key {key_file} is not a regular file: remove it (the entries it "
                "signed are then ignored)"
            )
        _check_private(key_file, st, 0o077, "chmod 600")
        data = os.read(fd, _KEY_BYTES + 1)
    finally:
        os.close(fd)
    return data


def _create_key(key_file: Path, secret: bytes) -> None:
    """``secret`` into a new ``key_file``, unless another process made one first (where files
    cannot be linked into place: it is then empty for a moment)."""
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())


class FileCacheStore(CacheStore):
    """Results kept as files under a directory (default: ``ASYNCFLOW_CACHE_DIR``, else
    ``~/.cache/asyncflow``).

    Values are serialised with cloudpickle, which is code: every file carries an HMAC made with
    a secret key kept in the directory (created with mode 0600), and a file whose HMAC does not
    match is ignored, never unpickled. The directory must be its user's own: one owned by
    another user or writable by others (so others could write the key or the files), or a key
    others may read, is refused with ``PermissionError``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            from ._settings import get_settings

            configured = get_settings().cache_dir
            path = configured or Path.home() / ".cache" / "asyncflow"
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_private(self.path, os.stat(self.path), 0o022, "chmod go-w")
        self._secret = self._load_secret()

    def _load_secret(self) -> bytes:
        key_file = self.path / ".key"
        secret = _read_secret(key_file)
        if secret is not None:
            return secret
        # Written whole to a file of its own, then linked into place (which fails if another
        # process linked one first): ``.key`` is never seen empty or half written.
        secret = secrets.token_bytes(_KEY_BYTES)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-key-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secret)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, key_file)
            except FileExistsError:  # (another process's is the key)
                pass
            except OSError:  # no hard links on this file system (vfat, some network mounts)
                _create_key(key_file, secret)
        finally:
            os.unlink(tmp)
        secret = _read_secret(key_file)
        if secret is None:
            raise FileNotFoundError(f"cache key {key_file} was removed as it was made")
        return secret

    def _file(self, key: str) -> Path:
        return self.path / hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> CacheEntry | None:
        try:
            data = self._file(key).read_bytes()
        except FileNotFoundError:
            return None
        mac, payload = data[:32], data[32:]
        if not hmac.compare_digest(mac, hmac.digest(self._secret, payload, "sha256")):
            logger.warning("cache file for key %r failed its integrity check; ignored", key)
            return None
        stored_key, value, expires_at = cloudpickle.loads(payload)
        entry = CacheEntry(value, expires_at)
        if stored_key != key or entry.expired():
            return None
        return entry

    def set(self, key: str, value: Any, expires_at: float | None) -> None:
        payload = cloudpickle.dumps((key, value, expires_at))
        mac = hmac.digest(self._secret, payload, "sha256")
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(mac + payload)
            os.replace(tmp, self._file(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
