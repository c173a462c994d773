"""`--workers N`: N load processes on this machine behind the one `LoadProcess` interface.

`WorkerGroup` starts N spawned load processes (`LoadProcess` with a `WorkerHook`), each
sending its share of the one schedule (`llmtop.load.share`), and merges what they ship into
the stream of messages one load process would send: every worker's raw records go to the one
collector in the parent (exact: the union of the requests), one status with the sums, one
LoadStarted (the start barrier), one LoadStopped when every worker has stopped. Controls go
to every worker at once: rate, pause and resume at an agreed instant a little ahead (so their
schedules stay one schedule), concurrency as shares that sum to it.

A worker that dies mid-run is *lost*, not fatal: its share is dealt over the others from an
agreed instant on (the offered rate holds), what it shipped stays in the collector, and a
`WorkerLost` message says so; only when every worker is gone has the load failed.

Raw records into one collector keep up to a measured ingest rate (`benchmarks/workers.py`,
docs/scale.md); beyond one machine the Ray group (`llmtop.load.ray_workers`) ships interval
histograms instead.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmtop.config import RunConfig
from llmtop.load import channel as ch
from llmtop.load.book import WorkerBook
from llmtop.load.hook import WorkerHook
from llmtop.load.process import LoadProcess
from llmtop.load.share import (
    MembersSet,
    StartAt,
    TimedControl,
    WorkerReady,
    WorkerReported,
    group_size,
    split_evenly,
    worker_config,
    worker_share,
)

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
        self.book.status(i, now_ns, st.load_cpu_s, st.sent, st.in_flight)

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


class WorkerGroup(GroupBase):
    """N local load processes with the interface of one `LoadProcess`."""

    def __init__(self, config: RunConfig, n: int = 1) -> None:
        super().__init__(config, n)
        self.processes = [
            LoadProcess(
                worker_config(config, i, self.n), WorkerHook(worker_share(config, i, self.n))
            )
            for i in range(self.n)
        ]
        self.ready: set[int] = set()
        self.barrier_ns: int | None = None
        self._fd_index: dict[int, int] = {}

    # -- the LoadProcess interface ----------------------------------------------------------------
    @property
    def proc(self) -> Any:
        return self.processes[0].proc

    @property
    def pid(self) -> int | None:
        return self.processes[0].pid

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self.processes]

    @property
    def alive(self) -> bool:
        return any(p.alive for i, p in enumerate(self.processes) if i not in self.lost)

    @property
    def all_closed(self) -> bool:
        return all(p.channel is None or p.channel.closed for p in self.processes)

    @property
    def exitcode(self) -> int | None:
        codes = [p.proc.exitcode if p.proc is not None else None for p in self.processes]
        return next((c for c in codes if c), codes[0])

    def death(self) -> dict[str, Any]:
        dead = [p for p in self.processes if not p.alive] or self.processes
        info = process_death(dead[0])
        if self.n > 1:
            info = {**info, "message": f"all {self.n} load processes ended: " + info["message"]}
        return info

    def start(self) -> None:
        for p in self.processes:
            p.start()
            p.pid  # noqa: B018
        for i, p in enumerate(self.processes):
            if p.channel is not None:
                self._fd_index[p.channel.sock.fileno()] = i

    def send(self, msg: Any) -> int | None:
        """Send a control to every live worker; returns the instant it takes effect (on this
        clock) when the workers apply it at an agreed time, else None."""
        live = self.live
        if isinstance(msg, ch.StopRequested):
            self.stop_sent = True
            for i in live:
                self.processes[i].send(msg)
            return None
        if isinstance(msg, ch.ConcurrencySet):
            self.concurrency = msg.concurrency
            self._send_concurrency()
            return None
        if self.n > 1 and isinstance(msg, SCHEDULE_CONTROLS) and not self.config.plan.closed_loop:
            at = time.perf_counter_ns() + round(CONTROL_MARGIN_S * 1e9)
            for i in live:
                self.processes[i].send(TimedControl(at, msg))
            return at
        for i in live:
            self.processes[i].send(msg)
        return None

    def _send_concurrency(self) -> None:
        live = self.live
        for i, c in zip(live, split_evenly(self.concurrency, len(live)), strict=True):
            self.processes[i].send(ch.ConcurrencySet(c))

    def set_rate(self, rate: float) -> None:
        self.send(ch.RateSet(rate))

    def stop(self, cancel_in_flight: bool = True) -> None:
        self.send(ch.StopRequested(cancel_in_flight))

    def receive(self, timeout_s: float) -> list[Any]:
        """Every message the workers shipped within `timeout_s`, merged into one stream."""
        chans = [
            (i, p.channel)
            for i, p in enumerate(self.processes)
            if p.channel is not None and not p.channel.closed
        ]
        out: list[Any] = []
        ready_idx = [i for i, c in chans if c._pending]
        if not ready_idx and chans:
            try:
                readable, _, _ = select.select([c.sock for _, c in chans], [], [], timeout_s)
            except (OSError, ValueError):
                readable = []
            ready_idx = [self._fd_index[s.fileno()] for s in readable]
        elif not chans:
            time.sleep(timeout_s)
        now = time.perf_counter_ns()
        records: list[Any] = []
        status_seen = False
        for i in ready_idx:
            for msg in self.processes[i].channel.receive(0.0):  # type: ignore[union-attr]
                status_seen |= self._take(i, msg, now, out, records)
        self._check_lost(now, out)
        if records:
            out.insert(0, ch.RecordsShipped(records))
        if status_seen:
            merged = self._merged_status()
            if merged is not None:
                out.append(merged)
        self._maybe_all_stopped(out)
        return out

    def _take(self, i: int, msg: Any, now: int, out: list[Any], records: list[Any]) -> bool:
        """One worker's message into the merged stream; True for a status."""
        if isinstance(msg, ch.RecordsShipped):
            self.book.records(i, msg.records, now)
            records.extend(msg.records)
        elif isinstance(msg, ch.StatusReported):
            self._on_status(i, msg, now)
            return True
        elif isinstance(msg, WorkerReported):
            self.book.lags(
                i, np.frombuffer(msg.loop_lag_us, dtype=np.int64), msg.late_controls, now
            )
        elif isinstance(msg, WorkerReady):
            self.book.accounts[i].pid = msg.pid
            self.book.accounts[i].node = msg.host
            self.ready.add(i)
            if self.barrier_ns is None and self.ready >= set(self.live):
                self.barrier_ns = time.perf_counter_ns() + round(START_MARGIN_S * 1e9)
                for j in self.live:
                    self.processes[j].send(StartAt(self.barrier_ns))
        elif isinstance(msg, ch.LoadStarted):
            if self.started is None:
                self.started = msg
                out.append(msg)
        elif isinstance(msg, ch.MeasurementStarted):
            if self.measuring is None:
                self.measuring = msg
                out.append(msg)
        elif isinstance(msg, ch.LoadStopped):
            self.stopped[i] = msg
        elif isinstance(msg, ch.LoadFailed):
            out.append(msg)
        else:
            out.append(msg)
        return False

    def _check_lost(self, now: int, out: list[Any]) -> None:
        """Workers whose channel closed without a stop: lost; their share goes to the others."""
        for i, p in enumerate(self.processes):
            if i in self.lost or self.stopped[i] is not None:
                continue
            if p.channel is None or not p.channel.closed or p.alive:
                continue
            reason = process_death(p)["message"]
            self.lost.add(i)
            self.book.lose(i, now, reason)
            acc = self.book.accounts[i]
            at = self._respread() if self.live and not self.stop_sent else None
            out.append(WorkerLost(i, acc.node, now, reason, acc.lost_in_flight, at))
        if self.barrier_ns is None and self.ready and self.ready >= set(self.live) and self.live:
            self.barrier_ns = time.perf_counter_ns() + round(START_MARGIN_S * 1e9)
            for j in self.live:
                self.processes[j].send(StartAt(self.barrier_ns))

    def _respread(self) -> int:
        """Deal the lost workers' share over the live ones (open loop) or re-split the
        concurrency (closed loop), from an agreed instant on; returns that instant."""
        if self.config.plan.closed_loop:
            self._send_concurrency()
            return time.perf_counter_ns()
        at = time.perf_counter_ns() + round(RESPREAD_MARGIN_S * 1e9)
        members = tuple(self.live)
        for i in members:
            self.processes[i].send(TimedControl(at, MembersSet(members)))
        return at

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for every worker to end (killing any that will not), within `timeout_s` in all."""
        deadline = time.monotonic() + timeout_s
        for p in self.processes:
            if p.alive and not self.stop_sent:
                p.send(ch.StopRequested(True))
        for p in self.processes:
            p.join(max(deadline - time.monotonic(), 0.1))


def make_group(config: RunConfig) -> Any:
    """The load for a run: `--workers N` here, or Ray actors with `--ray ADDRESS`."""
    plan = config.plan
    if plan.ray:
        from llmtop.load.ray_workers import RayWorkerGroup

        return RayWorkerGroup(config, plan.workers, plan.ray)
    return WorkerGroup(config, plan.workers)
