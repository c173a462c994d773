"""Per-worker accounts and the client-saturation guard.

The parent keeps, for each worker of a group (one local load process, or one Ray actor's),
what it completed and failed, its CPU, its own send slip (actual send minus the time it got
its slot: the worker's lateness, without any `--max-concurrency` wait) and its loop lag (how
late a precise 100 ms timer ran on its loop). From those the guard says when the *client*,
not the server, is the bottleneck, and how many workers would fix it.

Pure bookkeeping: every method that needs the time is given it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from llmtop.metrics import records
from llmtop.metrics.hdr import (
    CountsHistogram,
    Histogram,
    add_into,
    clear,
    counts_of,
    new_histogram,
    record_many,
    summarize,
    value_at_percentile_us,
)
from llmtop.metrics.records import RequestRecord
from llmtop.metrics.telemetry import WorkerLine

# The guard's limits (DESIGN.md: "a guard that says when the client is the bottleneck").
SLIP_P99_LIMIT_MS = 1.0  # a worker's own send slip p99 above this: it sends late
CPU_LIMIT = 0.85  # a worker busier than this (of one core) has no room for bursts
LAG_GROWTH = 2.0  # loop lag p99 now vs the stretch before: growing
LAG_FLOOR_MS = 2.0  # ... but only once it is at least this (below it is timer noise)
LAG_LIMIT_MS = 10.0  # a loop this far behind is saturated whether or not it grows
CPU_TARGET = 0.70  # what each worker should use after the fix (headroom for bursts)
BUSY_HOST_CPU = 0.5  # late while using less than this: the host is busy, not the workers
PARENT_BEHIND_MS = 1000.0  # the parent reads what workers shipped this late: it is the limit
RECENT_S = 5.0  # the live guard looks at this many seconds
MIN_SLIP_SAMPLES = 200  # p99 of fewer samples is just their maximum


def _ms(h: Histogram | None, p: float = 99.0) -> float | None:
    """A percentile in ms (numpy over the counters: the guard runs four times a second)."""
    if h is None or not h.get_total_count():
        return None
    return value_at_percentile_us(h, p) / 1000


def _summary(h: HdrHistogram) -> dict[str, Any]:
    return summarize(h).as_dict() if h.get_total_count() else {"count": 0}


@dataclass
class WorkerAccount:
    """One worker's figures, as the parent sees them."""

    id: int
    node: str
    pid: int | None = None
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    warmup: int = 0
    cpu_s: float = 0.0
    sent: int = 0
    in_flight: int = 0
    late_controls: int = 0
    lost: bool = False
    lost_at_ns: int | None = None
    lost_reason: str = ""
    lost_in_flight: int = 0  # sent by it and never reported back: lost with it
    slip: HdrHistogram = field(default_factory=new_histogram)  # µs, whole run
    lag: HdrHistogram = field(default_factory=new_histogram)  # µs, whole run
    # the live guard's stretches: (start_ns, histogram) for the current and previous RECENT_S
    slip_now: HdrHistogram = field(default_factory=new_histogram)
    slip_before: HdrHistogram = field(default_factory=new_histogram)
    lag_now: HdrHistogram = field(default_factory=new_histogram)
    lag_before: HdrHistogram = field(default_factory=new_histogram)
    stretch_start_ns: int = 0
    cpu_points: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=64))
    first_cpu: tuple[int, float] | None = None
    lag_grew: bool = False  # sticky: the live guard saw the lag grow at least once

    def rotate(self, now_ns: int) -> None:
        """Start a new guard stretch every RECENT_S: the current one becomes the previous."""
        if not self.stretch_start_ns:
            self.stretch_start_ns = now_ns
            return
        if now_ns - self.stretch_start_ns < RECENT_S * 1e9:
            return
        for now_h, before_h in ((self.slip_now, self.slip_before), (self.lag_now, self.lag_before)):
            clear(before_h)
            add_into(before_h, now_h)
            clear(now_h)
        self.stretch_start_ns = now_ns

    def cpu_fraction(self, now_ns: int | None = None) -> float | None:
        """Share of one core used over the last ~RECENT_S (the whole run when now_ns is None)."""
        pts = self.cpu_points
        if len(pts) < 2:
            return None
        t1, c1 = pts[-1]
        if now_ns is None:
            t0, c0 = self.first_cpu or pts[0]
        else:
            t0, c0 = pts[0]
            for t, c in pts:
                if t1 - t <= RECENT_S * 1e9:
                    t0, c0 = t, c
                    break
        dt = (t1 - t0) / 1e9
        return (c1 - c0) / dt if dt > 0.5 else None

    def live_slip_p99_ms(self) -> float | None:
        n = self.slip_before.get_total_count() + self.slip_now.get_total_count()
        if n < MIN_SLIP_SAMPLES:
            return None
        both = CountsHistogram()
        both.add_counts(counts_of(self.slip_before) + counts_of(self.slip_now), n)
        return _ms(both)

    def lag_growing(self) -> bool:
        now, before = _ms(self.lag_now), _ms(self.lag_before)
        if now is None or before is None:
            return False
        return now >= LAG_FLOOR_MS and now >= LAG_GROWTH * max(before, 0.001)

    def line(self, now_ns: int) -> WorkerLine:
        return WorkerLine(
            id=self.id,
            node=self.node,
            cpu_pct=_pct(self.cpu_fraction(now_ns)),
            slip_p99_ms=self.live_slip_p99_ms(),
            lag_p99_ms=_ms(self.lag_now) or _ms(self.lag_before),
            completed=self.completed,
            failed=self.failed,
            lost=self.lost,
        )

    def as_dict(self, start_ns: int = 0) -> dict[str, Any]:
        cpu = self.cpu_fraction(None)
        out: dict[str, Any] = {
            "id": self.id,
            "node": self.node,
            "pid": self.pid,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "cpu_s": round(self.cpu_s, 3),
            "cpu_pct": _pct(cpu),
            "send_slip_ms": _summary(self.slip),
            "loop_lag_ms": _summary(self.lag),
            "late_controls": self.late_controls,
            "lost": self.lost,
        }
        if self.lost:
            out["lost_at_s"] = (
                round((self.lost_at_ns - start_ns) / 1e9, 3) if self.lost_at_ns else None
            )
            out["lost_reason"] = self.lost_reason
            out["lost_in_flight"] = self.lost_in_flight
        return out


def _pct(frac: float | None) -> float | None:
    return None if frac is None else round(100 * frac, 1)


@dataclass(frozen=True)
class ClientVerdict:
    """The guard's answer: is the client the bottleneck, why, and how many workers fix it."""

    bound: bool
    reasons: tuple[str, ...] = ()
    workers: int = 0  # workers now
    workers_needed: int = 0
    cores_free: int | None = None
    host_busy: bool = False  # late with idle workers: other processes hold this host's CPU
    parent_behind: bool = False  # the parent's one collector cannot take the records

    @property
    def message(self) -> str:
        if not self.bound:
            return ""
        collector = (
            "the parent's one collector is at its limit (docs/scale.md): --ray ships "
            "histograms instead of records"
        )
        if self.parent_behind and not self.workers_needed > self.workers:
            fix = collector
        elif self.host_busy:
            fix = (
                "the workers themselves are mostly idle, so other processes on this host "
                "delay them: more workers will not fix it; free the host or use --ray"
            )
        else:
            fix = f"--workers {self.workers_needed} would fix it"
            if self.cores_free is not None and self.workers_needed > self.cores_free:
                fix += f" (this host has {self.cores_free} free cores: add machines with --ray)"
            if self.parent_behind:
                fix += "; and " + collector
        return (
            "the CLIENT is the bottleneck, not the server: " + "; ".join(self.reasons) + f"; {fix}"
        )

    def as_dict(self) -> dict[str, Any] | None:
        if not self.bound:
            return None
        return {
            "where": "client",
            "cause": "client_saturation",
            "reasons": list(self.reasons),
            "workers": self.workers,
            "workers_needed": self.workers_needed,
            "host_busy": self.host_busy,
            "parent_behind": self.parent_behind,
            "message": self.message,
        }


def workers_needed(cpu_fracs: Sequence[float | None], live: int, bound: bool) -> int:
    """Workers that would carry the same load at CPU_TARGET each (at least one more when the
    client is bound: slip or lag can come with moderate CPU when bursts collide)."""
    total = sum(f for f in cpu_fracs if f is not None)
    need = math.ceil(total / CPU_TARGET) if total > 0 else live
    return max(need, live + 1) if bound else max(need, live)


class WorkerBook:
    """Every worker's account; fed with what the workers ship, asked for lines and verdicts."""

    def __init__(self, nodes: Sequence[str], cores_free: int | None = None) -> None:
        self.accounts = [WorkerAccount(i, node) for i, node in enumerate(nodes)]
        self.cores_free = cores_free
        # how late the parent read the workers' statuses (same clock only): (now, ms)
        self.behind: deque[tuple[int, float]] = deque(maxlen=64)
        self.parent_fell_behind = False  # sticky, for the run's verdict
        self.worst_behind_ms = 0.0
        self.parent_busy_behind = False  # behind while its own CPU was high: the collector
        # the parent's own CPU (seconds of process time) at moments of this clock
        self.parent_cpu_points: deque[tuple[int, float]] = deque(maxlen=64)
        self._first_parent_cpu: tuple[int, float] | None = None
        self._ever: set[str] = set()  # guard reasons seen during the run (for the JSON)

    def __len__(self) -> int:
        return len(self.accounts)

    @property
    def live(self) -> list[WorkerAccount]:
        return [a for a in self.accounts if not a.lost]

    def records(self, index: int, recs: Iterable[RequestRecord], now_ns: int) -> None:
        acc = self.accounts[index]
        acc.rotate(now_ns)
        slips = []
        for r in recs:
            if r.error == records.CANCELLED:
                acc.cancelled += 1
                continue
            if not r.measured:
                acc.warmup += 1
                continue
            if r.error is None:
                acc.completed += 1
            else:
                acc.failed += 1
            if r.send_ns:
                slips.append(r.send_ns - r.slot_ns)
        if slips:
            values = np.maximum(np.asarray(slips, dtype=np.int64), 0) // 1000
            record_many(acc.slip, values)
            record_many(acc.slip_now, values)

    def histograms(
        self, index: int, slip: HdrHistogram | None, counts: dict[str, int], now_ns: int
    ) -> None:
        """What a remote worker ships instead of records: its slip histogram and counters."""
        acc = self.accounts[index]
        acc.rotate(now_ns)
        if slip is not None and slip.get_total_count():
            add_into(acc.slip, slip)
            add_into(acc.slip_now, slip)
        acc.completed += counts.get("completed", 0)
        acc.failed += counts.get("failed", 0)
        acc.cancelled += counts.get("cancelled", 0)
        acc.warmup += counts.get("warmup", 0)

    def status(
        self,
        index: int,
        t_ns: int,
        cpu_s: float,
        sent: int,
        in_flight: int,
        behind_ns: int | None = None,
    ) -> None:
        """A worker's status, read at `t_ns`; `behind_ns`: how long after it was sent."""
        if behind_ns is not None:
            ms = behind_ns / 1e6
            self.behind.append((t_ns, ms))
            self.worst_behind_ms = max(self.worst_behind_ms, ms)
            if ms > PARENT_BEHIND_MS:
                self.parent_fell_behind = True
                frac = self.parent_cpu_fraction(t_ns)
                if frac is not None and frac > CPU_LIMIT:
                    self.parent_busy_behind = True
        acc = self.accounts[index]
        acc.cpu_s = cpu_s
        acc.sent = sent
        acc.in_flight = in_flight
        if not acc.cpu_points or acc.cpu_points[-1][0] != t_ns:  # a status seen twice
            acc.cpu_points.append((t_ns, cpu_s))
        if acc.first_cpu is None:
            acc.first_cpu = (t_ns, cpu_s)

    def lags(self, index: int, lag_us: np.ndarray, late_controls: int, now_ns: int) -> None:
        acc = self.accounts[index]
        acc.rotate(now_ns)
        acc.late_controls = late_controls
        if lag_us.size:
            record_many(acc.lag, lag_us)
            record_many(acc.lag_now, lag_us)
        if acc.lag_growing():
            acc.lag_grew = True

    def lose(self, index: int, now_ns: int, reason: str) -> None:
        acc = self.accounts[index]
        if not acc.lost:
            acc.lost = True
            acc.lost_at_ns = now_ns
            acc.lost_reason = reason
            reported = acc.completed + acc.failed + acc.cancelled + acc.warmup
            acc.lost_in_flight = max(acc.in_flight, acc.sent - reported)

    def parent_cpu(self, t_ns: int, cpu_s: float) -> None:
        """The parent's own CPU time now: a parent behind its workers while it is busy is
        the collector's limit; behind while idle, it is starved by a busy host."""
        self.parent_cpu_points.append((t_ns, cpu_s))
        if self._first_parent_cpu is None:
            self._first_parent_cpu = (t_ns, cpu_s)

    def parent_cpu_fraction(self, now_ns: int | None) -> float | None:
        pts = self.parent_cpu_points
        if len(pts) < 2:
            return None
        t1, c1 = pts[-1]
        t0, c0 = self._first_parent_cpu or pts[0] if now_ns is None else pts[0]
        if now_ns is not None:
            for t, c in pts:
                if t1 - t <= RECENT_S * 1e9:
                    t0, c0 = t, c
                    break
        dt = (t1 - t0) / 1e9
        return (c1 - c0) / dt if dt > 0.5 else None

    def lines(self, now_ns: int) -> tuple[WorkerLine, ...]:
        return tuple(a.line(now_ns) for a in self.accounts)

    def _judge(self, live_view: bool, now_ns: int | None) -> ClientVerdict:
        reasons: list[str] = []
        fracs: list[float | None] = []
        for a in self.live:
            frac = a.cpu_fraction(now_ns if live_view else None)
            fracs.append(frac)
            slip = (
                a.live_slip_p99_ms()
                if live_view
                else (_ms(a.slip) if a.slip.get_total_count() >= MIN_SLIP_SAMPLES else None)
            )
            if slip is not None and slip > SLIP_P99_LIMIT_MS:
                reasons.append(f"worker {a.id} send slip p99 {slip:.2f} ms")
            if frac is not None and frac > CPU_LIMIT:
                reasons.append(f"worker {a.id} CPU {100 * frac:.0f} %")
            lag_now = _ms(a.lag_now) if live_view else _ms(a.lag)
            if live_view and a.lag_growing():
                reasons.append(f"worker {a.id} loop lag growing (p99 {lag_now:.1f} ms)")
            elif not live_view and a.lag_grew:
                reasons.append(f"worker {a.id} loop lag grew during the run")
            elif lag_now is not None and lag_now > LAG_LIMIT_MS:
                reasons.append(f"worker {a.id} loop lag p99 {lag_now:.1f} ms")
        recent = [ms for t, ms in self.behind if now_ns is None or now_ns - t <= RECENT_S * 1e9]
        if live_view:
            worst = max(recent, default=0.0)
            behind = worst > PARENT_BEHIND_MS
            pfrac = self.parent_cpu_fraction(now_ns)
            collector_bound = behind and pfrac is not None and pfrac > CPU_LIMIT
        else:
            worst, behind = self.worst_behind_ms, self.parent_fell_behind
            collector_bound = self.parent_busy_behind
        workers_bound = bool(reasons)
        if behind:
            why = "while busy" if collector_bound else "while mostly idle: starved"
            reasons.append(
                f"the parent read its workers' records up to {worst / 1e3:.1f} s late ({why})"
            )
        bound = bool(reasons)
        live = len(self.live)
        known = [f for f in fracs if f is not None]
        host_busy = bound and bool(known) and max(known) < BUSY_HOST_CPU and not collector_bound
        return ClientVerdict(
            bound,
            tuple(reasons),
            live,
            live if host_busy else workers_needed(fracs, live, workers_bound),
            self.cores_free,
            host_busy,
            collector_bound,
        )

    def verdict(self, now_ns: int) -> ClientVerdict:
        """The live guard (the last ~RECENT_S to 2×RECENT_S)."""
        return self._judge(True, now_ns)

    def run_verdict(self) -> ClientVerdict:
        """The whole run's guard (JSON, table): whole-run slip and CPU, any lag growth seen."""
        return self._judge(False, None)

    def summaries(self, start_ns: int = 0) -> list[dict[str, Any]]:
        return [a.as_dict(start_ns) for a in self.accounts]
