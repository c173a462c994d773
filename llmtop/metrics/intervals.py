"""Time-keyed views of the collector that the session keeps while the run goes on.

`IntervalRecorder` keeps 1-second histograms, encoded, for the snapshot's `intervals` (and so
the `.hlog` export and the report's time series); `step_index_of` says which rate step a
request belongs to without touching the collector (for the per-request log). Both live here
so that the session needs nothing from `llmtop.output`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from llmtop.metrics.catalog import INTERVAL_METRICS
from llmtop.metrics.collector import Interval, Step
from llmtop.metrics.hdr import encode_histogram, new_histogram


class IntervalRecorder:
    """Merges the collector's ~250 ms intervals into 1-second ones, kept encoded.

    Why: the `.hlog` export and the report's time series want full histograms over time, and
    an encoded second costs a few hundred bytes where a live HdrHistogram costs ~180 kB.
    The session calls `add(interval, start_ns)` after each `collector.tick`.
    """

    def __init__(self, period_s: float = 1.0, metrics: Iterable[str] = INTERVAL_METRICS) -> None:
        self.period_ns = round(period_s * 1e9)
        self.metrics = tuple(metrics)
        self.intervals: list[dict[str, Any]] = []
        self._open: dict[str, HdrHistogram] = {}
        self._from_ns: int | None = None
        self._to_ns = 0
        self._start_ns = 0

    def add(self, interval: Interval, start_ns: int) -> None:
        self._start_ns = start_ns
        if self._from_ns is None:
            self._from_ns = interval.start_ns
        for m in self.metrics:
            h = interval.histograms.get(m)
            if h is not None and h.get_total_count():
                if m not in self._open:
                    self._open[m] = new_histogram()
                self._open[m].add(h)
        self._to_ns = interval.end_ns
        if self._to_ns - self._from_ns >= self.period_ns:
            self.flush()

    def flush(self) -> None:
        """Close the running second (also called when a snapshot is taken)."""
        if self._from_ns is None:
            return
        if self._open:
            self.intervals.append(
                {
                    "start_s": round((self._from_ns - self._start_ns) / 1e9, 3),
                    "end_s": round((self._to_ns - self._start_ns) / 1e9, 3),
                    "histograms": {m: encode_histogram(h) for m, h in self._open.items()},
                }
            )
        self._open = {}
        self._from_ns = None


def step_index_of(steps: Sequence[Step], t_ns: int) -> int | None:
    """The index of the step running at `t_ns` (a request's intended send), without side
    effects on the collector; steps are in start order."""
    i = bisect_right([s.start_ns for s in steps], t_ns) - 1
    return steps[i].index if i >= 0 else None
