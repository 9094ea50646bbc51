"""Peak resident memory of one run: this process's growth plus the peaks of its workers.

Linux keeps a high-water mark of each process's resident set (``VmHWM`` in
``/proc/<pid>/status``), and writing ``5`` to ``/proc/<pid>/clear_refs`` resets it to the
current size. So a run is measured at no cost while it runs: reset the marks, run, read them.
There is no sampling thread competing with the work for the GIL.

A system's workers (pool processes, Dask's nanny and workers, Prefect's server) are the child
processes that appeared while it started or ran: ``Peaks`` tracks which pids belong to which
system, so one system's idle workers do not count in another's row. Elsewhere (no ``/proc``)
every reading is ``None`` and the table shows "—".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

try:
    import psutil
except ImportError:  # then only this process is measured, not its workers
    psutil = None

__all__ = ("PEAKS", "Peaks", "supported")

_PROC = Path("/proc/self/status")
_HWM = re.compile(r"^VmHWM:\s+(\d+) kB$", re.MULTILINE)
_RSS = re.compile(r"^VmRSS:\s+(\d+) kB$", re.MULTILINE)


def _read(pid: int | str, pattern: re.Pattern[str]) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:  # the process has exited, or there is no /proc
        return None
    found = pattern.search(text)
    return None if found is None else int(found.group(1)) * 1024


def _reset(pid: int | str) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def supported() -> bool:
    """Whether the high-water mark of this process can be read and reset."""
    return _PROC.exists() and _reset("self") and _read("self", _HWM) is not None


def _trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``: hand freed heap memory back to the system before a run, so
    memory an earlier run freed does not hide what this one needs (a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


_malloc_trim = _trim()


def _children() -> set[int]:
    if psutil is None:
        return set()
    try:
        return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    except psutil.Error:
        return set()


class Peaks:
    """Resets and reads the high-water marks around each run; attributes children to systems."""

    def __init__(self) -> None:
        self.enabled = supported()
        self._known: set[int] = _children()  # children that were there before any system
        self._owned: dict[str, set[int]] = {}
        self._start = 0

    def claim(self, system: str) -> None:
        """Every child process not seen before belongs to ``system`` (call after it starts and
        after each of its runs)."""
        now = _children()
        new = now - self._known
        self._known |= new
        self._owned.setdefault(system, set()).update(new)

    def begin(self) -> None:
        """Reset the marks of this process and of every child, just before a run."""
        if not self.enabled:
            return
        for pid in _children():
            _reset(pid)
        _malloc_trim()
        _reset("self")
        self._start = _read("self", _RSS) or 0

    def end(self, system: str) -> int | None:
        """Bytes: this process's peak above its size at ``begin`` plus the peaks of the
        children that belong to ``system``."""
        if not self.enabled:
            return None
        self.claim(system)
        peak = _read("self", _HWM)
        if peak is None:
            return None
        total = max(0, peak - self._start)
        for pid in self._owned.get(system, ()):
            total += _read(pid, _HWM) or 0
        return total

    def quiet(self, owner: str, timeout: float = 60.0) -> None:
        """Wait (up to ``timeout`` seconds) until the live children of ``owner`` use less than
        a tenth of a core: a server still busy with a backlog would slow the next system."""
        if psutil is None:
            return
        procs = []
        for pid in self._owned.get(owner, ()):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                proc.cpu_percent()
                procs.append(proc)
        deadline = time.monotonic() + timeout
        while procs and time.monotonic() < deadline:
            time.sleep(0.5)
            busy = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    busy += proc.cpu_percent()
            if busy < 10.0:
                return


PEAKS = Peaks()
"""One tracker for the whole run: a child started in one workload keeps its owner."""
