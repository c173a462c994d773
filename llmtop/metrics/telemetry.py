"""Telemetry frames: the immutable picture of the load that reporters and the UI render."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtop.metrics.collector import MetricSummary


@dataclass(frozen=True)
class Telemetry:
    """One frame, produced every ~250 ms by the collector side of the parent."""

    t_ns: int
    elapsed_s: float
    phase: str
    offered_rate: float
    paused: bool
    sent: int
    in_flight: int
    queued: int
    completed: int
    failed: int
    errors: dict[str, int]
    window_s: float
    window: dict[str, MetricSummary]
    request_rate: float  # completions per second over the window
    output_tps: float  # output tokens per second over the window
    total_tps: float
    load_cpu_s: float
    precise_pacer: bool
    connections: int
    interval_histograms: dict[str, bytes] = field(default_factory=dict)
