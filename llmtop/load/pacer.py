"""Precise wake-ups for the arrival schedule.

asyncio's and uvloop's timers round to a millisecond (epoll takes a timeout in ms), which alone
puts up to 1 ms of slip on every send. On Linux a timerfd armed with an absolute
CLOCK_MONOTONIC deadline wakes epoll within microseconds, and `time.perf_counter_ns()` reads the
same clock. Elsewhere, or if the timerfd cannot be made, fall back to `loop.call_at`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = getattr(os, "O_CLOEXEC", 0o2000000)
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _ = (libc.timerfd_create, libc.timerfd_settime)
    except (OSError, AttributeError):
        return None
    return libc


class Pacer:
    """Calls `callback()` on the event loop at (or just after) an absolute perf_counter_ns time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._fd = -1
        self._handle: asyncio.TimerHandle | None = None
        self._libc = _load_libc()
        if self._libc is not None:
            fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                self._spec = _Itimerspec()
                loop.add_reader(fd, self._on_timerfd)

    @property
    def precise(self) -> bool:
        """True when wake-ups come from a timerfd rather than the loop's ms-rounded timers."""
        return self._fd >= 0

    def arm(self, deadline_ns: int | None) -> None:
        """Wake at `deadline_ns` (a past deadline fires at once); None disarms."""
        if self._fd >= 0:
            spec = self._spec
            if deadline_ns is None:
                spec.it_value.tv_sec = 0
                spec.it_value.tv_nsec = 0
            else:
                deadline_ns = max(deadline_ns, 1)
                spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
            self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None)  # type: ignore[union-attr]
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if deadline_ns is not None:
            delay_s = (deadline_ns - time.perf_counter_ns()) / 1e9
            self._handle = self._loop.call_later(max(delay_s, 0.0), self._fire)

    def _on_timerfd(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        self._callback()

    def _fire(self) -> None:
        self._handle = None
        self._callback()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._handle is not None:
            self._handle.cancel()
