"""What the local and the Ray worker groups share (`workers.py`, `ray_workers.py`).

A group has the interface of one `LoadProcess`; this is its common part: the merged status,
the stop of the whole group, lost workers, and how many cores this host has free.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

from llmtop.config import RunConfig
from llmtop.load import channel as ch
from llmtop.load.book import WorkerBook
from llmtop.load.process import LoadProcess
from llmtop.load.share import group_size

START_MARGIN_S = 0.05  # the barrier: every worker is told to start this far ahead
CONTROL_MARGIN_S = 0.1  # a rate change takes effect this far ahead, on every worker at once
RESPREAD_MARGIN_S = 0.2  # a lost worker's share moves to the others this far ahead
SCHEDULE_CONTROLS = (ch.RateSet, ch.Paused, ch.Resumed)


@dataclass(frozen=True)
class WorkerLost:
    """A worker of the group ended without stopping (killed, crashed, its node gone)."""

    index: int
    node: str
    t_ns: int
    reason: str
    in_flight: int  # what it had in flight (lost with it)
    respread_at_ns: int | None = None  # from then on the others send its share


def process_death(p: LoadProcess) -> dict[str, Any]:
    """How a load process ended: its own `death()` when it has one, else from the exit code."""
    death = getattr(p, "death", None)
    if death is not None:
        return death()
    code = p.proc.exitcode if p.proc is not None else None
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return {"message": f"the load process was killed by {name}", "exit_code": code}
    return {"message": f"the load process ended unexpectedly (exit code {code})", "exit_code": code}


def free_cores() -> int:
    """Cores this process may use that are not busy (affinity minus the 1-minute load)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, cores - round(busy))


def auto_workers() -> int:
    """`--workers auto`: free cores minus one (the parent's collector needs one)."""
    return max(1, free_cores() - 1)


class _GroupChannel:
    """What the session reads of a load process's channel: closed once every one is."""

    def __init__(self, group: Any) -> None:
        self._group = group

    @property
    def closed(self) -> bool:
        return self._group.all_closed


class GroupBase:
    """What the local and the Ray groups share: merging status, stop and loss bookkeeping."""

    def __init__(self, config: RunConfig, n: int) -> None:
        self.config = config
        self.n = group_size(config.plan, n)
        self.book = WorkerBook([socket.gethostname()] * self.n, free_cores())
        self.channel = _GroupChannel(self)
        self.statuses: list[ch.StatusReported | None] = [None] * self.n
        self.stopped: list[ch.LoadStopped | None] = [None] * self.n
        self.lost: set[int] = set()
        self.started: ch.LoadStarted | None = None
        self.measuring: ch.MeasurementStarted | None = None
        self.stop_sent = False
        self.concurrency = config.plan.concurrency or 0
        self._stopped_sent = False
        self.same_clock = True  # workers' times are on this clock (not so over Ray)

    # -- membership -----------------------------------------------------------------------------
    @property
    def live(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.lost]

    def _running(self) -> list[int]:
        return [i for i in self.live if self.stopped[i] is None]

    # -- merging ----------------------------------------------------------------------------------
    def _merged_status(self) -> ch.StatusReported | None:
        sts = [s for i, s in enumerate(self.statuses) if s is not None]
        if not sts:
            return None
        first = sts[0]
        live = [s for i, s in enumerate(self.statuses) if s is not None and i not in self.lost]
        phases = {s.phase for s in live} or {first.phase}
        phase = next((p for p in ("warmup", "measuring") if p in phases), first.phase)
        closed = self.config.plan.closed_loop
        return ch.StatusReported(
            t_ns=max(s.t_ns for s in sts),
            sent=sum(s.sent for s in sts),
            in_flight=sum(s.in_flight for s in live),
            queued=sum(s.queued for s in live),
            offered_rate=float(self.concurrency) if closed else first.offered_rate,
            paused=any(s.paused for s in live),
            phase=phase,
            load_cpu_s=sum(s.load_cpu_s for s in sts),
            precise_pacer=all(s.precise_pacer for s in sts),
            connections=sum(s.connections for s in live),
            kernel_stamps=sum(s.kernel_stamps for s in sts),
            user_stamps=sum(s.user_stamps for s in sts),
        )

    def _on_status(self, i: int, st: ch.StatusReported, now_ns: int) -> None:
        self.statuses[i] = st
        behind = now_ns - st.t_ns if self.same_clock else None  # the parent keeping up?
        # the worker's own clock times its CPU readings (over Ray, not this clock)
        self.book.status(i, st.t_ns, st.load_cpu_s, st.sent, st.in_flight, behind)

    def _maybe_all_stopped(self, out: list[Any]) -> None:
        if self._stopped_sent or self._running() or not self.live:
            return
        stops = [s for s in self.stopped if s is not None]
        if not stops:
            return
        self._stopped_sent = True
        reasons = [s.reason for s in stops]
        reason = max(set(reasons), key=reasons.count)
        out.append(ch.LoadStopped(max(s.t_ns for s in stops), reason))

    def describe(self) -> dict[str, Any]:
        """Keys for the run's JSON besides the per-worker figures."""
        return {"ray": None}

    def lost_event(self, msg: WorkerLost, start_ns: int) -> dict[str, Any]:
        """A lost worker, as the JSON and the snapshot keep it."""
        return {
            "id": msg.index,
            "node": msg.node,
            "at_s": round((msg.t_ns - start_ns) / 1e9, 3) if start_ns else None,
            "reason": msg.reason,
            "in_flight_lost": msg.in_flight,
            "respread_to": self.live,
            "respread_at_s": (
                round((msg.respread_at_ns - start_ns) / 1e9, 3)
                if msg.respread_at_ns and start_ns
                else None
            ),
        }
