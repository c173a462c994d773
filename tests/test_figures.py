"""Figures are computed in one place: the knee, the UI curve, the snapshot's steps, telemetry
and the summary all read the same numbers from the same histograms and counters."""

from __future__ import annotations

import math
import random

import pytest

from llmtop.knee.runner import limit_observations, observe_step
from llmtop.metrics import records
from llmtop.metrics.collector import Collector
from llmtop.metrics.figures import run_summary, step_figures, step_summary, window_figures
from llmtop.metrics.hdr import value_at_percentile_us
from llmtop.slo import Slo
from llmtop.tui.model import step_point
from tests.test_collector import MS, rec

SLO = Slo.parse("ttft_p99<=80ms,tpot_p90<=12ms,error_rate<=10%")


def filled(seed: int = 5) -> Collector:
    """Two steps of requests with random TTFT and TPOT, a few failures, ticks every 250 ms."""
    rng = random.Random(seed)
    c = Collector(window_s=4.0, request_limits_ms=SLO.per_request_limits_ms())
    c.measurement_started(0)
    c.tick(0)
    for k in range(2):
        c.begin_step(k * 2000 * MS, 5.0 * (k + 1))
        for i in range(8):
            t0 = (k * 2000 + i * 250) * MS
            batch = []
            for j in range(10 * (k + 1)):
                send = t0 + j * MS
                if rng.random() < 0.08:
                    batch.append(rec(intended=send, send=send, error=records.http_error(503)))
                    continue
                first = send + round(rng.uniform(20, 120) * MS)
                gap = round(rng.uniform(5, 15) * MS)
                batch.append(
                    rec(intended=send, send=send, chunks=[(first + n * gap, 1) for n in range(6)])
                )
            c.add(batch)
            c.tick(t0 + 250 * MS)
    c.end_step(4000 * MS)
    return c


def test_a_step_reads_the_same_everywhere() -> None:
    c = filled()
    now = 4000 * MS
    for step in c.steps:
        summary = step_summary(step, SLO, now)
        point = step_point(step, SLO, now)
        obs = observe_step(step, SLO, now)
        ttft = step.histogram("ttft")
        p99 = value_at_percentile_us(ttft, 99.0) / 1000
        assert summary["ttft_ms"]["p99"] == point.ttft_p99_ms == p99
        assert summary["tpot_ms"]["p99"] == point.tpot_p99_ms
        assert summary["request_throughput"] == point.achieved_rps == obs.request_throughput
        assert summary["output_throughput"] == point.output_tps == obs.output_throughput
        assert summary["goodput"] == obs.goodput
        assert summary["completed"] == point.completed == obs.completed > 0
        assert summary["failed"] == point.failed == obs.failed
        assert summary["slo_ok"] == point.slo_ok
        done = step.counts.completed + step.counts.failed
        assert summary["error_rate"] == pytest.approx(step.counts.failed / done)
        by_limit = {lo.text: lo for lo in obs.limits}
        for r in summary["slo"]:
            assert by_limit[r["limit"]].value == r["value"]
        assert obs.e2e_p99_s == summary["e2el_ms"]["p99"] / 1000
        assert obs.send_slip_p99_ms == summary["send_slip_ms"]["p99"]


def test_exceedances_count_the_samples_above_each_limit() -> None:
    step = filled().steps[1]
    obs = limit_observations(step, SLO)
    ttft = next(lo for lo in obs if lo.text.startswith("ttft"))
    ttft_hist = step.histogram("ttft")
    above = sum(
        it.count_added_in_this_iter_step
        for it in ttft_hist.get_recorded_iterator()
        if it.value_iterated_to > 80_000
    )
    assert ttft.n == ttft_hist.get_total_count() and ttft.exceed == above > 0
    rate = next(lo for lo in obs if lo.kind == "rate")
    assert (
        rate.n == step.counts.completed + step.counts.failed and rate.exceed == step.counts.failed
    )


def test_an_empty_step_has_no_rates_for_the_knee_and_zero_for_the_tables() -> None:
    c = Collector()
    c.begin_step(10 * MS, 1.0)
    step = c.steps[0]
    assert step_summary(step, SLO, 10 * MS)["request_throughput"] == 0.0
    assert math.isnan(observe_step(step, SLO, 10 * MS).request_throughput)
    assert step_point(step, SLO, 10 * MS).slo_ok is None  # nothing measured: no verdict
    assert math.isnan(step_figures(step).value_ms("ttft", "p99"))


def test_window_and_run_verdicts_come_from_their_own_histograms() -> None:
    c = filled()
    live = window_figures(c)
    counts, span = c.window_counts()
    assert live.duration_s == span and live.counts.completed == counts.completed
    assert live.request_throughput == counts.completed / span
    window_ttft = c.window_histogram("ttft")
    for r in live.judge(SLO):
        if r.limit.metric == "ttft":
            assert r.value == value_at_percentile_us(window_ttft, 99.0) / 1000
        if r.limit.metric == "error_rate":
            assert r.value == counts.failed / (counts.completed + counts.failed)
    s = run_summary(c, SLO)
    values = {x["limit"]: x["value"] for x in s["slo"]["limits"]}
    assert values["ttft_p99<=80ms"] == s["ttft_ms"]["p99"]
    assert s["slo"]["ok"] == all(x["ok"] for x in s["slo"]["limits"])
    assert s["goodput"] == pytest.approx(s["good_requests"] / s["duration_s"])
    assert "slo" not in run_summary(c)
