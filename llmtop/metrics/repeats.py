"""`run --repeat N`: one workload run N times, each headline figure across runs and pooled.

Two views of the same runs, both pure functions of what they measured:
- across runs: each run's figure, their mean and a Student-t 95 % interval (N >= 2). The
  schedule and prompts are the same every run (same seed), so this spread is the server's
  and the system's, not the workload's;
- pooled: the figure of all runs' requests together, read from the runs' HDR histograms
  added exactly, with a distribution-free (order-statistic) 95 % interval for a percentile:
  what the HDR data say, not just N means.

The interval estimators are `llmtop.knee.stats`' (`mean_ci`, `quantile_ci_ranks`), a layer
above this one: the caller hands them in as `Estimators`, so they are written once.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmtop.metrics.catalog import BY_NAME, GAUGE_METRICS, METRICS
from llmtop.metrics.collector import Collector, Step
from llmtop.metrics.figures import Figures
from llmtop.metrics.hdr import Histogram, add_into, value_at_percentile_us
from llmtop.metrics.turns import TURN_METRICS, TurnFigures

HEADLINE_STATS = ("p50", "p99")
# (figure name, metric, statistic): the UI's latency gauges (TTFT, TPOT, ITL, E2E) at p50/p99
LATENCY_FIGURES: tuple[tuple[str, str, str], ...] = tuple(
    (f"{m}_{s}", m, s) for m in GAUGE_METRICS for s in HEADLINE_STATS
)
# whole-run rates, named as in the summary
RATE_FIGURES: dict[str, tuple[str, str]] = {  # name -> (label, unit)
    "request_throughput": ("req/s", "req/s"),
    "output_throughput": ("output tok/s", "tok/s"),
    "error_rate": (BY_NAME["error_rate"].label, BY_NAME["error_rate"].unit),
}
FIGURES: tuple[str, ...] = (*(name for name, _, _ in LATENCY_FIGURES), *RATE_FIGURES)
_LATENCY = {name: (metric, stat) for name, metric, stat in LATENCY_FIGURES}

MAX_EXACT_RANKS = 5000  # past this many samples, the exact binomial search takes > 0.2 s
Z95 = 1.959963984540054  # the standard normal's 97.5 % point


def figure_label(name: str) -> tuple[str, str]:
    """(label, unit) of a headline figure: "TTFT p99", "ms"."""
    if name in _LATENCY:
        metric, stat = _LATENCY[name]
        m = BY_NAME[metric]
        return f"{m.label} {stat}", m.unit
    return RATE_FIGURES[name]


@dataclass(frozen=True)
class Estimators:
    """The interval estimators (`llmtop.knee.stats`), handed in from above."""

    mean_ci: Callable[[list[float]], tuple[float, float, float]]  # mean, low, high
    quantile_ranks: Callable[[int, float], tuple[int | None, int | None]]  # 1-based ranks


def headline(f: Figures) -> dict[str, float]:
    """The headline figures of one stretch (a run, or all runs pooled); NaN where empty."""
    out = {name: f.value_ms(metric, stat) for name, metric, stat in LATENCY_FIGURES}
    out["request_throughput"] = f.request_throughput
    out["output_throughput"] = f.output_throughput
    out["error_rate"] = f.error_rate
    return out


def order_ranks(n: int, q: float, est: Estimators) -> tuple[int | None, int | None]:
    """Ranks (1-based) of the order statistics bounding the q-quantile of n samples at 95 %.

    Exact (binomial) up to MAX_EXACT_RANKS samples; above, the normal approximation of the
    same binomial (n·q·(1−q) is then large, and one rank more or less is within a
    histogram bucket), rounded outwards. None where n cannot bound that side.
    """
    if n <= MAX_EXACT_RANKS:
        return est.quantile_ranks(n, q)
    centre = n * q
    half = Z95 * math.sqrt(centre * (1 - q))
    lo = math.floor(centre - half)
    hi = math.ceil(centre + half) + 1
    return (lo if lo >= 1 else None), (hi if hi <= n else None)


def percentile_ci_ms(h: Histogram, stat: str, est: Estimators) -> tuple[float, float]:
    """A 95 % interval for a percentile ("p99") of the population the histogram samples:
    the values of the bounding order statistics, in ms (NaN where unbounded or empty)."""
    n = h.get_total_count()
    if not n:
        return math.nan, math.nan
    lo, hi = order_ranks(n, float(stat[1:]) / 100, est)

    def value(rank: int | None) -> float:
        # the r-th smallest sample is the value at percentile 100·r/n (HDR's own rank rule)
        return math.nan if rank is None else value_at_percentile_us(h, 100.0 * rank / n) / 1000

    return value(lo), value(hi)


@dataclass(frozen=True)
class RunResult:
    """What one of the N runs measured (its headline figures) and how it ended."""

    index: int  # 1-based
    values: dict[str, float]
    completed: int
    failed: int
    duration_s: float
    complete: bool  # ran to its end (an interrupted or failed run is pooled, not compared)
    notes: tuple[str, ...] = ()
    load_cpu_s: float = 0.0  # the load process's CPU time in this run

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.index,
            "complete": self.complete,
            "completed": self.completed,
            "failed": self.failed,
            "duration_s": self.duration_s,
            "load_cpu_s": self.load_cpu_s,
            "figures": dict(self.values),
            "notes": list(self.notes),
        }


def run_result(
    index: int, f: Figures, complete: bool, notes: tuple[str, ...] = (), load_cpu_s: float = 0.0
) -> RunResult:
    c = f.counts
    return RunResult(
        index, headline(f), c.completed, c.failed, f.duration_s, complete, notes, load_cpu_s
    )


def repeats_block(
    runs: list[RunResult], pooled: Figures, requested: int, est: Estimators
) -> dict[str, Any]:
    """The `"repeats"` JSON: per run, and per figure its values, mean, Student-t 95 % CI over
    the complete runs, the pooled value and (percentiles) its order-statistic 95 % CI."""
    complete = [r for r in runs if r.complete]
    pooled_values = headline(pooled)
    figures: dict[str, Any] = {}
    for name in FIGURES:
        label, unit = figure_label(name)
        values = [r.values[name] for r in complete]
        mean, lo, hi = est.mean_ci(values)
        pooled_ci = (math.nan, math.nan)
        if name in _LATENCY:
            metric, stat = _LATENCY[name]
            h = pooled.histograms.get(metric)
            if h is not None:
                pooled_ci = percentile_ci_ms(h, stat, est)
        figures[name] = {
            "label": label,
            "unit": unit,
            "values": values,
            "mean": mean,
            "ci95": [lo, hi],
            "pooled": pooled_values[name],
            "pooled_ci95": list(pooled_ci),
        }
    return {
        "n": len(complete),
        "requested": requested,
        "runs": [r.as_dict() for r in runs],
        "figures": figures,
    }


class PooledCollector(Collector):
    """The union of the runs' collectors: HDR counters and counts add exactly, each run is a
    step (its figures, histograms kept encoded), and the duration is the sum of the runs'
    measured durations: the waits between runs were no load, so req/s is all requests over
    all load time."""

    def __init__(
        self, window_s: float = 10.0, request_limits_ms: dict[str, float] | None = None
    ) -> None:
        super().__init__(window_s, request_limits_ms)
        self.run_durations_s: list[float] = []

    def add_run(self, run: Collector, label: str) -> Step:
        """Pool one finished run's whole-run figures."""
        for m in METRICS:
            add_into(self.cumulative[m], run.cumulative[m])
        self.counts.add(run.counts)
        self.out_of_range.update(run.out_of_range)
        self.late_records += run.late_records
        for kind, detail in run.error_examples.items():
            self.error_examples.setdefault(kind, detail)
        _merge_turns(self.turns.by_turn, run.turns.by_turn)
        start = run.measure_from_ns if run.measure_from_ns is not None else run.first_send_ns
        if start is not None and (self.measure_from_ns is None or start < self.measure_from_ns):
            self.measure_from_ns = start
        for name, pick in (("first_send_ns", min), ("last_end_ns", max)):
            mine, theirs = getattr(self, name), getattr(run, name)
            if theirs is not None:
                setattr(self, name, theirs if mine is None else pick(mine, theirs))
        duration = run.duration_s()
        self.run_durations_s.append(duration)
        begin = start if start is not None else (run.steps[0].start_ns if run.steps else 0)
        step = Step(
            len(self.steps),
            run.steps[0].offered if run.steps else math.nan,
            begin,
            begin + round(duration * 1e9),
            counts=dataclasses.replace(run.counts, errors=Counter(run.counts.errors)),
            label=label,
            compact={
                m: run.cumulative[m].encode() for m in METRICS if run.cumulative[m].total_count
            },
        )
        self.steps.append(step)
        return step

    def duration_s(self) -> float:
        return sum(self.run_durations_s)


def _merge_turns(into: dict[int, TurnFigures], other: dict[int, TurnFigures]) -> None:
    """Per-turn figures of another run added into ours (conversation workloads)."""
    for turn, t in other.items():
        mine = into.get(turn)
        if mine is None:
            mine = into[turn] = TurnFigures()
        for counter in dataclasses.fields(TurnFigures):  # every field but the histograms
            if counter.name != "histograms":
                setattr(mine, counter.name, getattr(mine, counter.name) + getattr(t, counter.name))
        for m in TURN_METRICS:
            add_into(mine.histograms[m], t.histograms[m])


__all__ = [
    "FIGURES",
    "Estimators",
    "PooledCollector",
    "RunResult",
    "figure_label",
    "headline",
    "order_ranks",
    "percentile_ci_ms",
    "repeats_block",
    "run_result",
]
