"""The arrival schedule is pure: a fake clock drives it, nothing sleeps."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from llmtop.load.arrivals import NS_PER_S, ArrivalSchedule


def drain(s: ArrivalSchedule, start_ns: int, end_ns: int, step_ns: int = 1_000_000) -> list[int]:
    """Advance a fake clock in steps, collecting every intended send time."""
    out: list[int] = []
    now = start_ns
    while now <= end_ns:
        out.extend(s.take_due(now))
        now += step_ns
    return out


def test_poisson_rate_and_gaps() -> None:
    s = ArrivalSchedule(rate=50.0, seed=1)
    s.start(0)
    times = drain(s, 0, 200 * NS_PER_S, step_ns=10_000_000)
    assert abs(len(times) / 200 - 50) < 2.5  # 10,000 arrivals: ±5 %
    gaps = [(b - a) / NS_PER_S for a, b in itertools.pairwise(times)]
    # Exponential gaps: mean = std = 1/rate
    assert statistics.mean(gaps) == pytest.approx(0.02, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.02, rel=0.08)
    assert times == sorted(times)


def test_burstiness_changes_spread_not_mean() -> None:
    calm = ArrivalSchedule(rate=20.0, burstiness=8.0, seed=2)
    bursty = ArrivalSchedule(rate=20.0, burstiness=0.25, seed=2)
    g_calm = [calm.gap_ns() / NS_PER_S for _ in range(20_000)]
    g_bursty = [bursty.gap_ns() / NS_PER_S for _ in range(20_000)]
    assert statistics.mean(g_calm) == pytest.approx(0.05, rel=0.05)
    assert statistics.mean(g_bursty) == pytest.approx(0.05, rel=0.08)
    assert statistics.stdev(g_calm) < 0.5 * statistics.stdev(g_bursty)


def test_first_request_is_due_at_start() -> None:
    s = ArrivalSchedule(rate=1.0)
    s.start(5 * NS_PER_S)
    assert s.next_due_ns() == 5 * NS_PER_S
    assert s.take_due(5 * NS_PER_S) == [5 * NS_PER_S]


def test_late_caller_gets_every_due_request_with_its_intended_time() -> None:
    s = ArrivalSchedule(rate=100.0, seed=3)
    s.start(0)
    due = s.take_due(NS_PER_S)  # the caller was asleep for a whole second
    assert 80 <= len(due) <= 120
    assert all(t <= NS_PER_S for t in due)
    assert s.next_due_ns() is not None and s.next_due_ns() > NS_PER_S


def test_rate_change_takes_effect_at_once_without_catch_up_burst() -> None:
    s = ArrivalSchedule(rate=1.0, seed=4)
    s.start(0)
    s.take_due(0)
    # Next arrival is ~1 s away; at t=0.1 s the rate goes to 1000/s.
    s.set_rate(NS_PER_S // 10, 1000.0)
    nxt = s.next_due_ns()
    assert nxt is not None and NS_PER_S // 10 <= nxt < NS_PER_S // 10 + 20_000_000
    times = drain(s, NS_PER_S // 10, NS_PER_S // 10 + NS_PER_S, step_ns=1_000_000)
    assert 900 <= len(times) <= 1100
    # And down again: a schedule that was behind does not dump its backlog.
    s.set_rate(3 * NS_PER_S, 1.0)
    assert s.take_due(3 * NS_PER_S) == []


def test_pause_and_resume_restart_from_now() -> None:
    s = ArrivalSchedule(rate=10.0, seed=5)
    s.start(0)
    s.take_due(0)
    s.pause()
    assert s.paused and s.next_due_ns() is None
    assert s.take_due(100 * NS_PER_S) == []  # nothing accrues while paused
    s.resume(100 * NS_PER_S)
    nxt = s.next_due_ns()
    assert nxt is not None and nxt >= 100 * NS_PER_S
    assert len(s.take_due(101 * NS_PER_S)) < 30


def test_infinite_rate_sends_all_at_once_up_to_the_limit() -> None:
    s = ArrivalSchedule(rate=math.inf)
    s.start(7)
    assert s.take_due(7, limit=50) == [7] * 50


def test_zero_rate_sends_nothing_and_bad_values_refused() -> None:
    s = ArrivalSchedule(rate=0.0)
    s.start(0)
    assert s.take_due(10 * NS_PER_S) == []
    with pytest.raises(ValueError):
        ArrivalSchedule(rate=-1.0)
    with pytest.raises(ValueError):
        ArrivalSchedule(rate=1.0, burstiness=0)


def test_same_seed_same_schedule() -> None:
    a, b = ArrivalSchedule(5.0, seed=9), ArrivalSchedule(5.0, seed=9)
    a.start(0)
    b.start(0)
    assert drain(a, 0, 10 * NS_PER_S) == drain(b, 0, 10 * NS_PER_S)
