"""What the UI asks of the load: plain, immutable commands put on a queue.

The UI thread never calls the session; it enqueues one of these and the worker thread (the
only one that touches the `LoadSession`) applies them between pumps. No Textual import here.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmtop.slo import Slo


@dataclass(frozen=True)
class SetRate:
    """Open loop: offer this many requests per second from now on (a new rate step)."""

    rate: float


@dataclass(frozen=True)
class SetConcurrency:
    """Closed loop: keep this many requests in flight from now on (a new step)."""

    concurrency: int


@dataclass(frozen=True)
class Pause:
    """Stop scheduling arrivals; requests in flight finish."""


@dataclass(frozen=True)
class Resume:
    """Start scheduling arrivals again."""


@dataclass(frozen=True)
class ResetWindow:
    """Forget the sliding window so the gauges show only what comes next."""


@dataclass(frozen=True)
class SaveSnapshot:
    """Write the snapshot of the run so far to `path`."""

    path: str


@dataclass(frozen=True)
class SetSlo:
    """Judge by this SLO from now on (the `l` key): the gauges, goodput, the `a` search."""

    slo: Slo


@dataclass(frozen=True)
class StartKnee:
    """Run the knee search step by step from the worker (when llmtop.knee.search is available)."""


@dataclass(frozen=True)
class Stop:
    """Stop the load, keep what was measured, and end the worker."""


Command = (
    SetRate
    | SetConcurrency
    | Pause
    | Resume
    | ResetWindow
    | SaveSnapshot
    | SetSlo
    | StartKnee
    | Stop
)
