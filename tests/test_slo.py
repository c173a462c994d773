"""The SLO language: any metric, any percentile, clear errors for anything else."""

from __future__ import annotations

import math

import pytest

from llmtop.slo import Slo, SloError, parse_limit


@pytest.mark.parametrize(
    ("text", "metric", "stat", "threshold"),
    [
        ("ttft_p99<=1s", "ttft", "p99", 1000.0),
        ("tpot_p99<=20ms", "tpot", "p99", 20.0),
        ("e2el_p90<=10s", "e2el", "p90", 10_000.0),
        ("itl_p99.9 <= 500us", "itl", "p99.9", 0.5),
        ("ttft_mean<250ms", "ttft", "mean", 250.0),
        ("tpot_avg<=30ms", "tpot", "mean", 30.0),
        ("e2el_max<=60s", "e2el", "max", 60_000.0),
        ("ttft_p95<=2.5s", "ttft", "p95", 2500.0),
    ],
)
def test_latency_limits(text: str, metric: str, stat: str, threshold: float) -> None:
    limit = parse_limit(text)
    assert (limit.metric, limit.stat, limit.threshold) == (metric, stat, threshold)


def test_error_rate_as_percent_or_fraction() -> None:
    assert parse_limit("error_rate<=1%").threshold == pytest.approx(0.01)
    assert parse_limit("error_rate<=0.05").threshold == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ttft<=1s", "which statistic"),
        ("ttft_p99<=1", "unit"),
        ("latency_p99<=1s", "unknown metric"),
        ("ttft_p99=1s", "expected"),
        ("error_rate_p99<=1%", "takes no statistic"),
        ("ttft_p100<=1s", "between"),
    ],
)
def test_bad_limits_say_what_is_allowed(text: str, needle: str) -> None:
    with pytest.raises(SloError, match=needle):
        parse_limit(text)


def test_evaluate_and_per_request_limits() -> None:
    slo = Slo.parse("ttft_p99<=1s,tpot_p99<=20ms,ttft_p50<=300ms,error_rate<=1%")
    values = {("ttft", "p99"): 900.0, ("tpot", "p99"): 25.0, ("ttft", "p50"): 100.0}
    results = slo.evaluate(lambda m, s: values[(m, s)], error_rate=0.0)
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].ratio == pytest.approx(1.25)
    assert slo.per_request_limits_ms() == {"ttft": 300.0, "tpot": 20.0}
    assert "ttft_p99<=1s" in slo.text
    assert not Slo.parse("") and Slo.parse(None).limits == ()


def test_nothing_measured_breaks_nothing() -> None:
    results = Slo.parse("ttft_p99<=1s").evaluate(lambda m, s: math.nan, 0.0)
    assert results[0].ok
