"""The knee search state machine: a fake clock and scripted step results, no sleeps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from llmtop.knee.document import steps_table
from llmtop.knee.search import (
    Done,
    Drain,
    Hold,
    KneePlan,
    KneeResult,
    KneeSearch,
    SetLoad,
    StepObs,
)
from llmtop.knee.stats import (
    LimitObs,
    binom_cdf,
    binom_sf,
    judge_limit,
    min_samples_for_pass,
    quantile_ci_ranks,
)

TICK = 0.25
LIMIT_MS = 1000.0


@dataclass
class World:
    """A server whose p99 breaks the limit above `knee`; step results scripted from that."""

    knee: float
    per_unit_rate: float = 1.0  # completions per second per unit of load
    good_frac: float = 0.001  # share of samples above the limit below the knee
    bad_frac: float = 0.08  # ... and above it
    error_at: float | None = None  # load from which half the requests fail
    slip_ms: float = 0.5
    e2e_s: float = 0.5
    lag_s: float = 0.0  # stragglers: completions that arrive after the step ended

    def obs(self, value: float, elapsed: float, extra_after_end: float = 0.0) -> StepObs:
        n = int(value * self.per_unit_rate * elapsed)
        bad = value > self.knee
        frac = self.bad_frac if bad else self.good_frac
        k = int(n * frac)
        p99 = LIMIT_MS * (1.6 if bad else 0.4)
        failed = n if self.error_at is not None and value >= self.error_at else 0
        lim = LimitObs("ttft_p99<=1s", "quantile", LIMIT_MS, p99 if n else math.nan, n, k, 0.99)
        return StepObs(
            completed=n,
            failed=failed,
            limits=(lim,),
            e2e_p99_s=self.e2e_s,
            e2e_max_s=self.e2e_s,
            send_slip_p99_ms=self.slip_ms,
            slot_wait_p99_ms=0.0,
            in_flight=0,
            request_throughput=value if not bad else self.knee,
            output_throughput=128 * min(value, self.knee),
            goodput=value if not bad else 0.0,
        )


def drive(
    plan: KneePlan,
    world: World,
    limit_s: float = 10_000.0,
    observe: Callable[[float, float, float], StepObs] | None = None,
) -> tuple[KneeResult, list[object]]:
    """Run the machine against the scripted world on a fake clock."""
    search = KneeSearch(plan)
    now = 100.0
    decisions: list[object] = [search.start(now)]
    judged_value = None
    measure_t0 = now
    load = decisions[0].value  # type: ignore[attr-defined]
    draining_until: float | None = None
    while now < 100.0 + limit_s:
        now += TICK
        if judged_value is None:
            obs = StepObs()
        elif observe is not None:
            obs = observe(judged_value, now - measure_t0, now)
        else:
            obs = world.obs(judged_value, now - measure_t0)
        if draining_until is not None:
            obs = StepObs(
                obs.completed,
                obs.failed,
                obs.limits,
                obs.e2e_p99_s,
                obs.e2e_max_s,
                in_flight=0 if now >= draining_until else 17,
            )
        d = search.observe(now, obs)
        decisions.append(d)
        if isinstance(d, Done):
            return d.result, decisions
        if isinstance(d, SetLoad):
            draining_until = None
            load = d.value
            if d.measure:
                judged_value = d.value
                measure_t0 = now
        elif isinstance(d, Drain):
            draining_until = now + 2.0
    raise AssertionError(f"no answer in {limit_s} s (load {load})")


# -- statistics ---------------------------------------------------------------------------
def test_binomial_tails_match_known_values() -> None:
    assert binom_cdf(0, 10, 0.5) == pytest.approx(1 / 1024)
    assert binom_cdf(5, 10, 0.5) == pytest.approx(0.623046875)
    assert binom_sf(1, 100, 0.01) == pytest.approx(1 - 0.99**100)
    assert binom_cdf(-1, 5, 0.3) == 0.0 and binom_cdf(5, 5, 0.3) == 1.0
    assert binom_cdf(3, 2000, 0.01) < 1e-5  # stable for large n


def test_sample_count_rule() -> None:
    assert min_samples_for_pass(0.99) == 299  # 0.99^299 < 5 %
    assert min_samples_for_pass(0.9) == 29
    assert min_samples_for_pass(0.999) == 2995


def test_order_statistic_interval_brackets_the_quantile() -> None:
    lo, hi = quantile_ci_ranks(1000, 0.99, 0.05)
    assert lo is not None and hi is not None
    assert 980 <= lo < 990 < hi <= 997
    lo, hi = quantile_ci_ranks(100, 0.99, 0.05)
    assert hi is None  # 100 samples cannot bound a p99 from above
    lo, hi = quantile_ci_ranks(101, 0.5, 0.05)
    assert lo is not None and hi is not None and lo < 51 < hi


@pytest.mark.parametrize(
    ("n", "k", "state", "confident"),
    [
        (5, 2, "breach", True),  # 2 of 5 above a p99: breach beyond doubt
        (300, 0, "pass", True),  # the rule of three
        (100, 0, "undecided", False),  # too few to confirm a p99
        (1000, 10, "undecided", False),  # right at the limit
        (1000, 25, "breach", True),
        (0, 0, "undecided", False),
    ],
)
def test_judge_percentile_limit(n: int, k: int, state: str, confident: bool) -> None:
    lim = LimitObs("ttft_p99<=1s", "quantile", 1000.0, 500.0 if n else math.nan, n, k, 0.99)
    v = judge_limit(lim, 0.05, 20)
    assert (v.state, v.confident) == (state, confident)


def test_judge_error_rate_and_max_and_mean() -> None:
    err = LimitObs("error_rate<=1%", "rate", 0.01, 0.0, 400, 0, 0.01)
    assert judge_limit(err, 0.05, 20).state == "pass"
    err = LimitObs("error_rate<=1%", "rate", 0.01, 0.1, 50, 5, 0.01)
    assert judge_limit(err, 0.05, 20).state == "breach"
    mx = LimitObs("ttft_max<=1s", "max", 1000.0, 1200.0, 50, 1)
    assert judge_limit(mx, 0.05, 20).state == "breach"
    mean = LimitObs("tpot_mean<=20ms", "mean", 20.0, 10.0, 400, 0, stddev=5.0)
    assert judge_limit(mean, 0.05, 20).state == "pass"
    mean = LimitObs("tpot_mean<=20ms", "mean", 20.0, 30.0, 400, 0, stddev=5.0)
    assert judge_limit(mean, 0.05, 20).state == "breach"


# -- the search ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("knee", "start", "factor", "per_unit"),
    [
        (5.5, 1.0, 2.0, 30.0),
        (5.5, 1.0, 1.5, 30.0),
        (133.0, 10.0, 2.0, 3.0),
        (0.37, 1.0, 2.0, 300.0),  # the start already breaks: it goes down, then bisects
        (77.0, 77.0, 2.0, 5.0),  # the knee is the start
    ],
)
def test_bisects_to_the_resolution(
    knee: float, start: float, factor: float, per_unit: float
) -> None:
    plan = KneePlan(start=start, factor=factor, max_value=10_000)
    result, _ = drive(plan, World(knee, per_unit_rate=per_unit))
    assert result.complete
    assert result.knee is not None and result.first_bad is not None
    assert result.knee <= knee < result.first_bad
    assert (result.first_bad - result.knee) / result.knee <= plan.resolution + 1e-9
    assert result.knee >= knee * (1 - plan.resolution) - 1e-9
    assert result.knee_step is not None and result.knee_step.verdict == "good"
    assert result.knee_step.basis == "confident"
    assert result.confidence == "high", result.confidence_notes
    assert "bracketed" in result.reason
    assert result.knee_step.obs is not None and result.knee_step.obs.goodput > 0


def test_decision_sequence_warmup_measure_drain() -> None:
    plan = KneePlan(start=4, factor=2, max_value=100, warmup_first_s=3.0)
    _, decisions = drive(plan, World(5.0, per_unit_rate=30))
    first = decisions[0]
    assert isinstance(first, SetLoad) and not first.measure and first.phase == "warmup"
    setloads = [d for d in decisions if isinstance(d, SetLoad)]
    assert setloads[1].measure and setloads[1].value == 4
    # warm-up then measure for every step; a drain after each breach (rate mode)
    kinds = [
        (type(d).__name__, getattr(d, "phase", "")) for d in decisions if not isinstance(d, Hold)
    ]
    assert ("Drain", "") in kinds
    i = kinds.index(("Drain", ""))
    assert kinds[i + 1] == ("SetLoad", "warmup")
    assert isinstance(decisions[-1], Done)


def test_no_drain_in_concurrency_mode_and_integer_steps() -> None:
    plan = KneePlan(mode="concurrency", start=1, factor=2, max_value=256)
    result, decisions = drive(plan, World(12, per_unit_rate=20))
    assert not any(isinstance(d, Drain) for d in decisions)
    values = {d.value for d in decisions if isinstance(d, SetLoad)}
    assert all(v == int(v) for v in values)
    assert (result.knee, result.first_bad) == (12, 13)
    assert result.as_dict()["concurrency"] == 12 and result.as_dict()["rate"] is None


def test_stops_at_the_rate_cap() -> None:
    plan = KneePlan(start=1, factor=2, max_value=6)
    result, _ = drive(plan, World(1000, per_unit_rate=100))
    assert result.knee == 6 and result.first_bad is None
    assert "maximum" in result.reason
    assert result.confidence == "medium"  # no breach seen: a lower bound only


def test_nothing_meets_the_slo() -> None:
    plan = KneePlan(start=1, factor=2, max_value=100, min_value=0.2)
    result, _ = drive(plan, World(0.01, per_unit_rate=500))
    assert result.knee is None and result.confidence == "none"
    assert "breaks the SLO" in result.reason
    assert min(s.value for s in result.steps) >= 0.2


def test_error_surge_ends_the_search() -> None:
    plan = KneePlan(start=1, factor=2, max_value=100)
    result, _ = drive(plan, World(50, per_unit_rate=30, error_at=8))
    assert "error surge" in result.reason and not result.complete
    assert result.knee == 4 and result.steps[-1].basis == "error surge"


def test_client_limited_warning() -> None:
    plan = KneePlan(start=1, factor=2, max_value=100)
    result, _ = drive(plan, World(5.5, per_unit_rate=30, slip_ms=80.0))
    assert result.client_limited and result.confidence == "low"
    assert any("send slip" in w for w in result.warnings)


def test_undecided_steps_hold_to_the_maximum_and_say_so() -> None:
    # few samples per second: a p99 cannot be confirmed within max_step_s
    plan = KneePlan(start=4, factor=2, max_value=100, max_step_s=20, min_step_s=5)
    result, _ = drive(plan, World(5.5, per_unit_rate=1.0, good_frac=0.0, bad_frac=0.2))
    assert result.knee is not None and result.knee <= 5.5 < result.first_bad  # type: ignore[operator]
    assert result.knee_step is not None and result.knee_step.basis == "max hold"
    assert result.knee_step.measured_s == pytest.approx(20, abs=TICK)
    assert result.confidence in ("medium", "low")
    assert any("point estimate" in n for n in result.confidence_notes)


def test_stragglers_that_break_a_step_reopen_the_search() -> None:
    """A step that looked good is re-judged with its late completions; a breach flips it."""
    world = World(5.5, per_unit_rate=30)
    flips = {"value": 5.0}

    def observe(value: float, elapsed: float, now: float) -> StepObs:
        obs = world.obs(value, min(elapsed, 60))
        if value == flips["value"] and elapsed > 6:  # the late ones were all slow
            lim = obs.limits[0]
            bad = LimitObs(lim.text, lim.kind, lim.threshold, 1500.0, lim.n + 40, 40, lim.q)
            return StepObs(obs.completed + 40, 0, (bad,), 0.5, 0.5, in_flight=0)
        return obs

    plan = KneePlan(start=4, factor=2, max_value=100, min_step_s=5, warmup_min_s=3)
    result, _ = drive(plan, world, observe=observe)
    flipped = [s for s in result.steps if s.flipped]
    assert flipped and flipped[0].value == 5.0 and flipped[0].verdict == "bad"
    assert result.knee is not None and result.knee < 5.0


def test_verify_repeats_the_knee_step() -> None:
    plan = KneePlan(start=4, factor=2, max_value=100, verify=True)
    result, _ = drive(plan, World(5.5, per_unit_rate=30))
    assert result.knee is not None
    assert [s.phase for s in result.steps if s.value == result.knee][-1] == "verify"


def test_stop_keeps_the_steps_so_far() -> None:
    search = KneeSearch(KneePlan(start=2, factor=2))
    world = World(5.5, per_unit_rate=30)
    now = 0.0
    d = search.start(now)
    value, t0 = None, 0.0
    for _ in range(40):
        now += TICK
        d = search.observe(now, world.obs(value, now - t0) if value else StepObs())
        if isinstance(d, SetLoad) and d.measure:
            value, t0 = d.value, now
    done = search.stop(now, "interrupted")
    assert isinstance(done, Done) and not done.result.complete
    assert done.result.reason == "interrupted"
    assert done.result.steps and done.result.confidence in ("low", "none")
    assert isinstance(search.observe(now + 1, StepObs()), Done)  # stays done
    assert steps_table(done.result.steps)[0].split()[0] == "#"


def test_plan_validation() -> None:
    with pytest.raises(ValueError):
        KneePlan(factor=1.0)
    with pytest.raises(ValueError):
        KneePlan(start=10, max_value=5)
    with pytest.raises(ValueError):
        KneePlan(resolution=0)
    with pytest.raises(ValueError):
        KneePlan(mode="concurrency", start=1.5)


def test_a_growing_backlog_is_a_breach_even_when_the_completed_look_fine() -> None:
    """Above capacity the completed requests are the early, fast ones; in flight tells."""
    world = World(5.5, per_unit_rate=30)

    def observe(value: float, elapsed: float, now: float) -> StepObs:
        obs = world.obs(min(value, 5.0), elapsed)  # every completed request looks good
        backlog = int(max(value - 5.5, 0) * elapsed * 10)  # the queue grows above 5.5
        return StepObs(obs.completed, 0, obs.limits, 0.5, 0.5, 0.5, 0.0, in_flight=backlog + 2)

    plan = KneePlan(start=4, factor=2, max_value=100)
    result, _ = drive(plan, world, observe=observe)
    assert result.knee is not None and result.knee <= 5.5 < result.first_bad  # type: ignore[operator]
    assert any(s.basis == "backlog" for s in result.steps)
