"""Figures: what a stretch of the run measured, computed in one place.

A step (the knee runner, the UI's curve, the snapshot), the sliding window (telemetry) and
the whole run (the summary) are each a set of histograms, counters and a length of time;
`Figures` turns any of them into throughputs, goodput, the error rate, any statistic of any
metric and the SLO verdict, so these figures are computed the same way wherever they show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmtop.metrics.catalog import METRICS
from llmtop.metrics.collector import Collector, Counts, Step
from llmtop.metrics.hdr import Histogram, MetricSummary, stat_ms, summarize
from llmtop.slo import LimitResult, Slo


def error_rate(c: Counts) -> float:
    """failed / (completed + failed); 0 when nothing finished."""
    done = c.completed + c.failed
    return c.failed / done if done else 0.0


def histogram_value_ms(histograms: Mapping[str, Histogram], metric: str, stat: str) -> float:
    """A statistic ("p99", "mean", "max"...) of one metric's histogram (µs) in ms; NaN when
    the metric has no histogram or it holds nothing."""
    return stat_ms(histograms.get(metric), stat)


@dataclass(frozen=True)
class Figures:
    """The histograms, counters and duration of one stretch of the run, and what they say."""

    histograms: Mapping[str, Histogram]
    counts: Counts
    duration_s: float

    def per_s(self, n: float, empty: float = 0.0) -> float:
        """A count as a rate over this stretch; `empty` when it has no length yet."""
        return n / self.duration_s if self.duration_s else empty

    @property
    def request_throughput(self) -> float:
        return self.per_s(self.counts.completed)

    @property
    def output_throughput(self) -> float:
        return self.per_s(self.counts.output_tokens)

    @property
    def total_throughput(self) -> float:
        return self.per_s(self.counts.input_tokens + self.counts.output_tokens)

    @property
    def goodput(self) -> float:
        """Requests per second that met every per-request SLO limit."""
        return self.per_s(self.counts.good)

    @property
    def done(self) -> int:
        """Requests that finished, well or not (the error rate's denominator)."""
        return self.counts.completed + self.counts.failed

    @property
    def error_rate(self) -> float:
        return error_rate(self.counts)

    def value_ms(self, metric: str, stat: str) -> float:
        return histogram_value_ms(self.histograms, metric, stat)

    def summary(self, metric: str) -> MetricSummary:
        return summarize(self.histograms[metric])

    def judge(self, slo: Slo) -> list[LimitResult]:
        """Every limit of the SLO against these figures."""
        return slo.evaluate(self.value_ms, self.error_rate)


def step_figures(step: Step, now_ns: int | None = None) -> Figures:
    """A rate step's figures (a running step is measured up to `now_ns`)."""
    return Figures(step.all_histograms(), step.counts, step.duration_s(now_ns))


@dataclass(frozen=True)
class Waiting:
    """Requests of a step still in flight that already went past a latency limit."""

    count: int  # past the limit: each will end beyond it (right-censored samples)
    longest_ms: float  # the longest wait so far (NaN when none)
    shortest_ms: float  # the shortest wait past the limit (NaN when none)


_WAIT_FROM = {  # metric -> (column the wait is measured from, event it waits for)
    "ttft": (1, 2),
    "ttft_from_intended": (0, 2),
    "e2el": (1, None),
    "e2el_from_intended": (0, None),
}


def waiting_past(collector: Collector, step: Step, metric: str, threshold_ms: float) -> Waiting:
    """Requests of `step` in flight (at the load process's last report) whose `metric`
    already exceeds `threshold_ms` though they have not reached the event that ends it:
    no first token yet for TTFT, not finished for E2E. Other metrics: none."""
    spec = _WAIT_FROM.get(metric)
    table = collector.in_flight_table
    if spec is None or not len(table):
        return Waiting(0, math.nan, math.nan)
    col, event = spec
    mine = table[table[:, 0] >= step.start_ns]
    if step.end_ns is not None:
        mine = mine[mine[:, 0] < step.end_ns]
    mine = mine[mine[:, col] > 0]
    if event is not None:
        mine = mine[mine[:, event] == 0]
    if not len(mine):
        return Waiting(0, math.nan, math.nan)
    waits_ms = (collector.in_flight_t_ns - mine[:, col]) / 1e6
    past = waits_ms[waits_ms > threshold_ms]
    if not len(past):
        return Waiting(0, float(waits_ms.max()), math.nan)
    return Waiting(len(past), float(waits_ms.max()), float(past.min()))


def window_figures(collector: Collector) -> Figures:
    """The sliding window's figures (live views: read them before the next tick)."""
    counts, span_s = collector.window_counts()
    hists = {m: collector.window_histogram(m) for m in METRICS}
    return Figures(hists, counts, span_s)


def run_figures(collector: Collector) -> Figures:
    """The whole run's figures, over the measured duration (as vllm bench measures it)."""
    return Figures(collector.cumulative, collector.counts, collector.duration_s())


def slo_results(results: list[LimitResult]) -> list[dict[str, Any]]:
    """SLO results in the JSON shape of summaries and snapshots."""
    return [{"limit": r.limit.text, "value": r.value, "ok": r.ok} for r in results]


def step_summary(step: Step, slo: Slo | None = None, now_ns: int | None = None) -> dict[str, Any]:
    """One step's figures: achieved throughput, goodput, percentiles, and the SLO verdict."""
    f = step_figures(step, now_ns)
    c = f.counts
    out: dict[str, Any] = {
        "index": step.index,
        "label": step.label,
        "offered": step.offered,
        "duration_s": f.duration_s,
        "completed": c.completed,
        "failed": c.failed,
        "errors": dict(c.errors),
        "request_throughput": f.request_throughput,
        "output_throughput": f.output_throughput,
        "goodput": f.goodput,
        "error_rate": f.error_rate,
    }
    for m in METRICS:
        out[f"{m}_ms"] = f.summary(m).as_dict()
    if slo:
        results = f.judge(slo)
        out["slo"] = slo_results(results)
        out["slo_ok"] = all(r.ok for r in results)
    return out


def run_summary(collector: Collector, slo: Slo | None = None) -> dict[str, Any]:
    """The whole-run figures, in the `--json` shape; the SLO verdict when there is one."""
    f = run_figures(collector)
    c = f.counts
    per_request_limits = bool(collector.request_limits_us)
    out: dict[str, Any] = {f"{m}_ms": f.summary(m).as_dict() for m in METRICS}
    out.update(
        completed=c.completed,
        failed=c.failed,
        cancelled=c.cancelled,
        warmup_requests=c.warmup,
        errors=dict(c.errors),
        error_examples=dict(collector.error_examples),
        input_tokens=c.input_tokens,
        output_tokens=c.output_tokens,
        duration_s=f.duration_s,
        request_throughput=f.request_throughput,
        goodput=f.goodput if f.duration_s and per_request_limits else None,
        good_requests=c.good if per_request_limits else None,
        output_throughput=f.output_throughput,
        total_throughput=f.total_throughput,
        out_of_range=dict(collector.out_of_range),
        late_records=collector.late_records,
    )
    out.update(workload_figures(collector))
    if slo:
        results = f.judge(slo)
        out["slo"] = {
            "text": slo.text,
            "ok": all(r.ok for r in results),
            "limits": slo_results(results),
        }
    return out


def workload_figures(collector: Collector) -> dict[str, Any]:
    """Prompt tokens and what the server's prefix cache held of them; reasoning; turns.

    `cached_prompt_tokens` sums usage.prompt_tokens_details.cached_tokens (a request whose
    usage left it out counts 0, as vLLM leaves it out when nothing was cached); None when no
    request reported it (vLLM without --enable-prompt-tokens-details, most other engines).
    """
    c = collector.counts
    reported = c.cached_known > 0
    out: dict[str, Any] = {
        "prompt_tokens": c.input_tokens,
        "cached_prompt_tokens": c.cached_tokens if reported else None,
        "cached_prompt_fraction": (
            c.cached_tokens / c.input_tokens if reported and c.input_tokens else None
        ),
    }
    if c.reasoning_tokens:
        out["reasoning_tokens"] = c.reasoning_tokens
        out["answer_tokens"] = c.output_tokens - c.reasoning_tokens
    if collector.turns.by_turn:
        out["by_turn"] = collector.turns.summary(reported)
    return out
