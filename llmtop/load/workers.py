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

import select
import time
from typing import Any

import numpy as np

from llmtop.config import RunConfig
from llmtop.load import channel as ch
from llmtop.load.group import (
    CONTROL_MARGIN_S,
    RESPREAD_MARGIN_S,
    SCHEDULE_CONTROLS,
    START_MARGIN_S,
    GroupBase,
    WorkerLost,
    auto_workers,
    free_cores,
    process_death,
)
from llmtop.load.hook import WorkerHook
from llmtop.load.process import LoadProcess
from llmtop.load.share import (
    MembersSet,
    StartAt,
    TimedControl,
    WorkerReady,
    WorkerReported,
    split_evenly,
    worker_config,
    worker_share,
)


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
        self.book.parent_cpu(now, time.process_time())
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


__all__ = [
    "SCHEDULE_CONTROLS",
    "GroupBase",
    "WorkerGroup",
    "WorkerLost",
    "auto_workers",
    "free_cores",
    "make_group",
    "process_death",
]
