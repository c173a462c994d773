"""Telemetry frames: the immutable picture of the load that reporters and the UI render."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from llmtop.metrics.hdr import MetricSummary
from llmtop.slo import LimitResult


@dataclass(frozen=True)
class WorkerLine:
    """One load worker as the UI and the progress line show it (`llmtop.load.book`)."""

    id: int
    node: str
    cpu_pct: float | None  # share of one core over the last seconds
    slip_p99_ms: float | None  # its own send slip (without any --max-concurrency wait)
    lag_p99_ms: float | None  # how late a 100 ms timer ran on its loop
    completed: int
    failed: int
    lost: bool = False


@dataclass(frozen=True)
class Telemetry:
    """One frame, produced every ~250 ms by the collector side of the parent."""

    t_ns: int
    elapsed_s: float
    phase: str
    offered_rate: float  # req/s (open loop) or concurrency (closed loop)
    paused: bool
    sent: int
    in_flight: int
    queued: int  # scheduled but waiting for a --max-concurrency slot
    completed: int
    failed: int
    errors: dict[str, int]
    window_s: float
    window: dict[str, MetricSummary]  # ttft, tpot, itl, e2el, send_slip, queue_wait
    request_rate: float  # completions per second over the window
    output_tps: float  # output tokens per second over the window
    total_tps: float
    load_cpu_s: float
    precise_pacer: bool
    connections: int
    goodput: float | None = None  # req/s within every per-request limit (None: no SLO)
    slo: tuple[LimitResult, ...] = ()  # the SLO judged over the window
    step_index: int = 0
    server: dict[str, Any] | None = None  # latest server-side metrics sample, if any
    workers: tuple[WorkerLine, ...] = ()  # one line per load worker (docs/scale.md)
    client_bound: str | None = None  # the guard: why the client, not the server, is the limit


@dataclass(frozen=True)
class SeriesPoint:
    """One point a second of the run's time series (kept for charts and snapshots)."""

    t_s: float
    offered: float
    request_rate: float
    output_tps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    tpot_p99_ms: float
    itl_p99_ms: float
    e2el_p99_ms: float
    in_flight: int
    failed: int
    goodput: float | None

    @classmethod
    def from_telemetry(cls, t: Telemetry) -> SeriesPoint:
        w = t.window
        return cls(
            t_s=round(t.elapsed_s, 3),
            offered=t.offered_rate,
            request_rate=t.request_rate,
            output_tps=t.output_tps,
            ttft_p50_ms=w["ttft"].p50_ms,
            ttft_p99_ms=w["ttft"].p99_ms,
            tpot_p50_ms=w["tpot"].p50_ms,
            tpot_p99_ms=w["tpot"].p99_ms,
            itl_p99_ms=w["itl"].p99_ms,
            e2el_p99_ms=w["e2el"].p99_ms,
            in_flight=t.in_flight,
            failed=t.failed,
            goodput=t.goodput,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }
