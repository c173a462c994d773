"""What a worker of a group adds to the load process, inside the child.

`llmtop.load.process` calls `attach` once the load driver is built and `begin` instead of
`driver.start()`; every control message goes through `on_control` first. The hook deals the
schedule (`share.DealtSchedule`), keeps the prompts the one sequence of the whole group,
waits for the start barrier, applies timed controls at their agreed time, and measures how
late its own loop runs (a precise timer every 100 ms): the client-saturation guard reads it.

Timing is sacred: all this is a few callbacks a second, none per token.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from array import array
from collections.abc import Callable
from typing import Any

from llmtop.load import channel as ch
from llmtop.load.pacer import Pacer
from llmtop.load.share import (
    DealtSchedule,
    MembersSet,
    StartAt,
    TimedControl,
    WorkerReady,
    WorkerReported,
    WorkerShare,
)

PROBE_S = 0.1  # loop-lag probe period
REPORT_EVERY = 5  # probes per WorkerReported


class DealtPrompts:
    """The request factory of a worker, building the prompt of each arrival's *global* index,
    so the group sends the one prompt sequence (dataset order, trace rows) a single process
    would; the fresh random tokens are drawn from a per-worker seed, so two workers never
    send the same prompt."""

    def __init__(self, factory: Any, indices: Any, index: int, count: int) -> None:
        self._factory = factory
        self._indices = indices  # DealtSchedule.own_indices (open loop), or None
        self._index = index
        self._count = count
        self._n = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)

    def take_index(self, stride: int = 1) -> int:
        """The global index of this worker's next arrival; the factory's next prompt is then
        that arrival's (`stride` prompts an arrival: a conversation takes one a turn)."""
        # open loop: the dealt arrivals' indices; closed loop: worker i sends i, i + N, ...
        k = self._indices.popleft() if self._indices else self._index + self._count * self._n
        self._n += 1
        self._factory._i = k * stride
        return k

    def build(self) -> bytes:
        self.take_index()
        return self._factory.build()


class WorkerHook:
    """Picklable: crosses into the spawned load process with its config."""

    def __init__(self, share: WorkerShare) -> None:
        self.share = share
        self.host = socket.gethostname()
        self.late_controls = 0
        self._driver: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send: Callable[[Any], None] | None = None
        self._dealt: DealtSchedule | None = None
        self._pending: list[TimedControl] = []
        self._ctl: Pacer | None = None
        self._start: Pacer | None = None
        self._probe: Pacer | None = None
        self._probe_due = 0
        self._probes = 0
        self._lags = array("q")
        self._start_ns: int | None = None
        self._early: list[Any] = []  # controls that came before `attach` (start-up)

    def __getstate__(self) -> dict[str, Any]:
        return {"share": self.share}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["share"])  # type: ignore[misc]

    # -- set-up (in the child, before the loop starts the load) --------------------------------
    def attach(
        self, driver: Any, loop: asyncio.AbstractEventLoop, send: Callable[[Any], None]
    ) -> None:
        share = self.share
        self._driver, self._loop, self._send = driver, loop, send
        factory = getattr(driver, "factory", None)
        if share.count > 1 and factory is not None and hasattr(factory, "_rng"):
            factory._rng = random.Random(f"{share.seed}:worker:{share.index}")
        if share.dealing and not driver.closed_loop:
            self._dealt = DealtSchedule(driver.schedule, share, self._exhausted)
            driver.schedule = self._dealt
            if factory is not None:
                driver.factory = DealtPrompts(
                    factory, self._dealt.own_indices, share.index, share.count
                )
        elif share.dealing and factory is not None:
            driver.factory = DealtPrompts(factory, None, share.index, share.count)
        convs = getattr(driver, "convs", None)
        if convs is not None and share.dealing:
            # conversation k of the group is the one a single process would start k-th (its
            # dataset entry, its prompts); think times are drawn per worker
            convs.factory = driver.factory
            convs.rng = random.Random(f"{share.seed}:think:{share.index}")
        self._ctl = Pacer(loop, self._apply_due)
        self._probe = Pacer(loop, self._on_probe)
        early, self._early = self._early, []
        for msg in early:  # a worker lost while this one was still starting: re-spread
            if not self.on_control(msg):
                driver.on_control(msg)

    def begin(self, driver: Any) -> None:
        """Instead of `driver.start()`: at once, or at the group's start barrier."""
        if not self.share.barrier:
            self._started(None)
            return
        self._start = Pacer(self._loop, self._start_now)  # type: ignore[arg-type]
        self._emit(WorkerReady(self.share.index, _pid(), self.host))

    def _start_now(self) -> None:
        if self._start_ns is not None and self._driver is not None:
            self._started(self._start_ns)

    def _started(self, t0_ns: int | None) -> None:
        driver = self._driver
        if self._start is not None:
            self._start.close()
            self._start = None
        if driver.stopping:  # stopped before it started (the parent gave up meanwhile)
            return
        if t0_ns is None:
            driver.start()
        else:
            driver.start(t0_ns)
        self._probe_due = time.perf_counter_ns() + round(PROBE_S * 1e9)
        if self._probe is not None:
            self._probe.arm(self._probe_due)

    def _exhausted(self) -> None:
        """The group has sent all its measured requests: stop once the current batch is sent."""
        driver = self._driver
        self._loop.call_soon(  # type: ignore[union-attr]
            lambda: driver.request_stop("all requests sent", cancel_in_flight=False)
        )

    def _emit(self, msg: Any) -> None:
        if self._send is not None:
            self._send(msg)

    # -- control ------------------------------------------------------------------------------
    def on_control(self, msg: Any) -> bool:
        """True when the hook took the message (the driver never sees it)."""
        if self._driver is None:  # not attached yet: keep it for `attach`
            self._early.append(msg)
            return True
        if isinstance(msg, StartAt):
            self._start_ns = msg.t_ns
            if self._start is not None:
                self._start.arm(msg.t_ns)
            return True
        if isinstance(msg, TimedControl):
            self._timed(msg)
            return True
        if isinstance(msg, ch.StopRequested):
            for t in self._pending:
                if self._dealt is not None:
                    self._dealt.release(t.at_ns)
            self._pending.clear()
        return False

    def _timed(self, tc: TimedControl) -> None:
        dealt = self._dealt
        if dealt is None:  # closed loop or a group of one: nothing to keep in step
            self._pass_on(tc.msg)
            return
        if not dealt.hold(tc.at_ns):
            self.late_controls += 1
            dealt.applying(None)
            self._apply(tc, late=True)
            return
        self._pending.append(tc)
        self._pending.sort(key=lambda t: t.at_ns)
        self._ctl.arm(self._pending[0].at_ns)  # type: ignore[union-attr]

    def _apply_due(self) -> None:
        now = time.perf_counter_ns()
        while self._pending and self._pending[0].at_ns <= now:
            tc = self._pending.pop(0)
            self._dealt.release(tc.at_ns)  # type: ignore[union-attr]
            self._apply(tc, late=False)
        self._ctl.arm(self._pending[0].at_ns if self._pending else None)  # type: ignore[union-attr]
        driver = self._driver
        if driver is not None and not driver.stopping and driver.t0_ns:
            driver._on_due()  # arrivals held back behind the control are due now

    def _apply(self, tc: TimedControl, late: bool) -> None:
        dealt = self._dealt
        msg = tc.msg
        at = time.perf_counter_ns() if late else tc.at_ns
        if isinstance(msg, MembersSet):
            if dealt is not None:
                dealt.set_members(at, msg.members)
            return
        if dealt is not None:
            dealt.applying(at)
        try:
            self._pass_on(msg)
        finally:
            if dealt is not None:
                dealt.applying(None)

    def _pass_on(self, msg: Any) -> None:
        if isinstance(msg, MembersSet):
            return
        if self._driver is not None:
            self._driver.on_control(msg)

    # -- the loop-lag probe ---------------------------------------------------------------------
    def _on_probe(self) -> None:
        now = time.perf_counter_ns()
        self._lags.append(max(now - self._probe_due, 0) // 1000)
        period = round(PROBE_S * 1e9)
        self._probe_due += period
        if self._probe_due <= now:  # the loop was away for more than a period: skip ahead
            self._probe_due = now + period
        self._probes += 1
        if self._probes % REPORT_EVERY == 0:
            self._emit(WorkerReported(self.share.index, self._lags.tobytes(), self.late_controls))
            self._lags = array("q")
        driver = self._driver
        if driver is not None and driver.finished.done():
            self._probe.close()  # type: ignore[union-attr]
            return
        self._probe.arm(self._probe_due)  # type: ignore[union-attr]


def _pid() -> int:
    import os

    return os.getpid()
