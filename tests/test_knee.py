"""The knee search state machine: a fake clock and scripted step results, no sleeps."""

from __future__ import annotations

import dataclasses
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
    overlap: float = 1.0  # requests in flight per (rate × E2E) (Little's law: 1)

    def obs(self, value: float, elapsed: float, extra_after_end: float = 0.0) -> StepObs:
        n = int(value * self.per_unit_rate * elapsed)
        bad = value > self.knee
        frac = self.bad_frac if bad else self.good_frac
        k = int(n * frac)
        # beyond the knee the p99 grows with the overload (so less load helps)
        p99 = LIMIT_MS * (1 + 0.5 * math.log2(1 + value / self.knee)) if bad else 0.4 * LIMIT_MS
        failed = n if self.error_at is not None and value >= self.error_at else 0
        lim = LimitObs("ttft_p99<=1s", "quantile", LIMIT_MS, p99 if n else math.nan, n, k, 0.99)
        return StepObs(
            completed=n,
            failed=failed,
            limits=(lim,),
            e2e_p99_s=self.e2e_s,
            e2e_max_s=self.e2e_s,
            e2e_p50_s=self.e2e_s / 2,
            send_slip_p99_ms=self.slip_ms,
            slot_wait_p99_ms=0.0,
            in_flight=round(value * self.e2e_s * self.overlap),
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
            obs = dataclasses.replace(obs, in_flight=0 if now >= draining_until else 17)
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
    # E2E long enough that requests overlap at every load tried (else: unattainable)
    result, _ = drive(plan, World(knee, per_unit_rate=per_unit, e2e_s=10.0))
    assert result.complete
    assert result.knee is not None and result.first_bad is not None
    assert result.knee <= knee < result.first_bad
    assert (result.first_bad - result.knee) / result.knee <= plan.resolution + 1e-9
    assert result.knee >= knee * (1 - plan.resolution) - 1e-9
    assert result.knee_step is not None and result.knee_step.verdict == "good"
    # the answer is the confirmation: the knee held again, for at least a minute
    assert result.sustained and result.knee_step.phase == "confirm"
    assert result.knee_step.basis == "confirmed" and result.knee_step.measured_s >= 60
    assert result.confidence == "high", result.confidence_notes
    assert "sustained" in result.reason
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
    assert result.knee == 6 and result.first_bad is None and result.sustained
    assert any("no breach seen" in n for n in result.confidence_notes)
    assert result.confidence == "medium"  # no breach seen: a lower bound only


def test_nothing_meets_the_slo_floor() -> None:
    plan = KneePlan(start=1, factor=2, max_value=100, min_value=0.2)
    result, _ = drive(plan, World(0.01, per_unit_rate=500, e2e_s=20.0))
    assert result.knee is None and result.confidence == "none" and not result.met
    assert "breaks the SLO" in result.reason
    assert min(s.value for s in result.steps) >= 0.2


def test_an_slo_no_load_can_meet_is_reported_at_once() -> None:
    """Breaches where requests barely overlap (<= 1 in flight) cannot be helped by less load:
    the search says so after the first step instead of walking down ever slower steps."""
    plan = KneePlan(start=4, factor=2, max_value=100)
    result, _ = drive(plan, World(0.01, per_unit_rate=30, overlap=0.0))
    assert result.unattainable and result.knee is None and not result.met
    assert "unattainable" in result.reason and "overlap" in result.reason
    assert len(result.steps) == 1
    assert result.duration_s < 60


def test_an_slo_that_lower_load_does_not_improve_is_unattainable() -> None:
    """Halving the load twice without the figure moving: the floor is the server's own."""
    world = World(0.01, per_unit_rate=30)

    def observe(value: float, elapsed: float, now: float) -> StepObs:
        return dataclasses.replace(world.obs(value, elapsed), in_flight=8)

    plan = KneePlan(start=8, factor=2, max_value=100)
    result, _ = drive(plan, world, observe=observe)
    assert result.unattainable and "does not help" in result.reason
    assert [s.value for s in result.steps] == [8, 4]


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
    # few samples per second: a p99 cannot be settled within max_step_s
    plan = KneePlan(start=4, factor=2, max_value=100, max_step_s=20, min_step_s=5)
    result, _ = drive(plan, World(5.5, per_unit_rate=1.0, good_frac=0.0, bad_frac=0.2))
    assert result.knee is not None and result.knee <= 5.5 < result.first_bad  # type: ignore[operator]
    held = [s for s in result.steps if s.value == result.knee and s.phase != "confirm"]
    assert held and held[-1].basis == "max hold"
    assert held[-1].measured_s == pytest.approx(20, abs=TICK)
    # the knee rests on the confirmation, held long enough to gather its samples
    assert result.sustained and result.knee_step is not None
    assert result.knee_step.measured_s >= 60


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
    assert flipped[0].basis == "recheck"
    assert result.knee is not None and result.knee < 5.0


def test_a_failed_confirmation_steps_down_and_confirms_again() -> None:
    """The candidate breaks when held for the confirmation: the search steps down."""
    world = World(5.5, per_unit_rate=30)
    confirmed: list[float] = []

    def observe(value: float, elapsed: float, now: float) -> StepObs:
        # 5 looks good for a short step but breaks when held (a slow drift past the limit)
        if value == 5.5 and elapsed > 40:
            return world.obs(9.0, elapsed)
        return world.obs(value, elapsed)

    plan = KneePlan(start=4, factor=2, max_value=100)
    result, _ = drive(plan, world, observe=observe)
    confirms = [s for s in result.steps if s.phase == "confirm"]
    assert [s.value for s in confirms][:1] == [5.5] and confirms[0].verdict == "bad"
    # one step down: 5 % below the value that did not hold
    assert confirms[-1].verdict == "good" and confirms[-1].value == pytest.approx(5.225)
    assert result.sustained and result.knee == confirms[-1].value
    _ = confirmed


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


# -- steady state, tiers, budget (issue 11) -------------------------------------------------
def test_t_distribution_and_incomplete_beta() -> None:
    from llmtop.knee.stats import betainc, mean_ci, t_quantile, t_sf

    assert betainc(2, 3, 0.4) == pytest.approx(0.5248)
    assert t_sf(2.0, 10) == pytest.approx(0.036694, rel=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, rel=1e-4)
    assert t_quantile(0.975, 1000) == pytest.approx(1.9623, rel=1e-3)
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert (m, lo, hi) == pytest.approx(
        (2.0, 2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)), rel=1e-4
    )
    assert math.isnan(mean_ci([5.0])[1])


def test_clustered_exceedances_count_less() -> None:
    from llmtop.knee.stats import overdispersion, shown_within

    even = [(100, 2)] * 8  # 2 slow requests in every batch: binomial-like
    burst = [(100, 0)] * 7 + [(100, 16)]  # the same 16 in one congested spell
    assert overdispersion(even) == 1.0
    assert overdispersion(burst) > 10
    # 16 of 800 above a p99 is a breach beyond doubt if independent, not if clustered
    lim = LimitObs("ttft_p99<=1s", "quantile", LIMIT_MS, 1200.0, 800, 16, 0.99)
    assert judge_limit(lim, 0.05, 20, 1.0).state == "breach"
    assert judge_limit(lim, 0.05, 20, overdispersion(burst)).state != "breach"
    # and the upper bound of a p99 needs more samples when they come in clusters
    ok = LimitObs("ttft_p99<=1s", "quantile", LIMIT_MS, 600.0, 300, 0, 0.99)
    assert shown_within(ok, 0.5, 20, 1.0) and not shown_within(ok, 0.5, 20, 8.0)


def _samples(ns: list[int], means: list[float]) -> list[object]:
    from llmtop.knee.steady import Sample

    out = []
    n_tot = s_tot = 0.0
    sent = 0
    for i, (n_in, m) in enumerate(zip(ns, means, strict=True)):
        t = (i + 1) * 0.25
        sent += 2
        n_tot += 2
        s_tot += 2 * m
        out.append(Sample(t, sent, n_in, ((int(n_tot), 0, s_tot, int(n_tot)),)))
    return out


def test_steady_state_tests() -> None:
    from llmtop.knee.steady import analyse

    flat = _samples([8 + (i % 3) for i in range(160)], [100 + (i % 5) for i in range(160)])
    st = analyse(flat, 0.0, 8.0, [1000.0], 2.5, stddevs=[20.0])
    assert st.ok and st.batches == 16 and st.keeping_up, st.reasons
    growing = _samples([8 + i // 2 for i in range(160)], [100.0] * 160)
    st = analyse(growing, 0.0, 8.0, [1000.0], 2.5)
    assert not st.ok and any("backlog" in r for r in st.reasons)
    assert not st.keeping_up  # 80 more in flight than when it began: departures fell short
    rising = _samples([8] * 160, [100.0 + 3 * i for i in range(160)])
    st = analyse(rising, 0.0, 8.0, [1000.0], 2.5)
    assert not st.ok and any("latency trend" in r for r in st.reasons)
    short = _samples([8] * 8, [100.0] * 8)
    assert not analyse(short, 0.0, 8.0, [1000.0], 1.0).ok  # two batches tell nothing


def test_a_rising_latency_never_earns_a_good_verdict() -> None:
    """The mean rises through the whole step (a queue still filling): no good verdict, and
    at --max-step the step is bad, "unsteady", even though its p99 reads within the limit."""
    world = World(50.0, per_unit_rate=30, e2e_s=2.0)

    def observe(value: float, elapsed: float, now: float) -> StepObs:
        obs = world.obs(value, elapsed)
        if value != 8.0:
            return obs
        lim = dataclasses.replace(obs.limits[0], mean=50.0 + 100.0 * elapsed, stddev=30.0)
        return dataclasses.replace(obs, limits=(lim,))

    plan = KneePlan(start=4, factor=2, max_value=8, max_step_s=40, min_step_s=5)
    result, _ = drive(plan, world, observe=observe)
    eight = [s for s in result.steps if s.value == 8.0 and s.phase != "confirm"]
    assert eight and eight[0].verdict == "bad" and eight[0].basis == "unsteady"
    assert eight[0].measured_s == pytest.approx(40, abs=TICK)
    assert result.knee is not None and 4.0 <= result.knee < 8.0


def test_the_budget_ends_with_an_honest_bracket() -> None:
    plan = KneePlan(start=4, factor=2, max_value=100, budget_s=60, min_step_s=10)
    result, _ = drive(plan, World(5.5, per_unit_rate=30, e2e_s=2.0))
    assert not result.sustained and not result.complete
    assert result.duration_s <= 60 + TICK
    assert "budget" in result.reason
    k = result.knees[0]
    assert "unconfirmed" in k.reason and k.confidence in ("low", "none")


def test_the_budget_keeps_time_for_the_confirmation() -> None:
    """With room for a few steps only, the bisection stops early and the knee is still
    confirmed (a wider bracket, but sustained)."""
    plan = KneePlan(start=4, factor=2, max_value=100, budget_s=200)
    result, _ = drive(plan, World(5.5, per_unit_rate=30, e2e_s=2.0))
    assert result.sustained and result.duration_s <= 200
    assert result.knee is not None and result.knee <= 5.5


def test_a_sparse_low_rate_step_is_not_a_backlog() -> None:
    """0.5 req/s with one request in flight and none done yet (a long prefill): waiting for
    it is not a backlog (the UI search once ended at 0.48 req/s on this)."""
    world = World(5.5, per_unit_rate=30)

    def observe(value: float, elapsed: float, now: float) -> StepObs:
        obs = world.obs(value, elapsed)
        if value == 0.5 and elapsed < 10:
            return dataclasses.replace(obs, completed=0, in_flight=1)
        return obs

    plan = KneePlan(start=0.5, factor=2, max_value=1)
    result, _ = drive(plan, world, observe=observe)
    assert all(s.basis != "backlog" for s in result.steps)
    assert result.knee == 1.0


def test_tiers_share_the_steps_and_each_gets_its_knee() -> None:
    """Two SLOs in one search: the tight tier breaks first, the loose one goes on ramping."""

    def observe(value: float, elapsed: float, now: float) -> StepObs:
        n = int(value * 30 * elapsed)
        lims = []
        for text, knee in (("ttft_p99<=500ms", 5.5), ("ttft_p99<=5s", 22.0)):
            bad = value > knee
            k = int(n * (0.08 if bad else 0.001))
            thr = 500.0 if "500" in text else 5000.0
            lims.append(LimitObs(text, "quantile", thr, thr * (1.6 if bad else 0.4), n, k, 0.99))
        return StepObs(n, 0, tuple(lims), 10.0, 10.0, 5.0, in_flight=round(value * 10), sent=-1)

    from llmtop.knee.model import Tier

    plan = KneePlan(
        start=4, factor=2, max_value=100, tiers=(Tier("chat", (0,)), Tier("batch", (1,)))
    )
    result, _ = drive(plan, World(1.0), observe=observe)
    chat, batch = result.knees
    assert (chat.name, batch.name) == ("chat", "batch")
    assert chat.knee is not None and chat.knee <= 5.5 < chat.first_bad  # type: ignore[operator]
    assert batch.knee is not None and batch.knee <= 22.0 < batch.first_bad  # type: ignore[operator]
    assert chat.sustained and batch.sustained
    assert result.knee == chat.knee  # "knee" stays the first tier's
    d = result.as_dict()
    assert d["tier"] == "chat" and d["rate"] == chat.knee
    assert [k.as_dict("rate")["tier"] for k in result.knees] == ["chat", "batch"]
    # the ramp steps served both tiers: 4 and 8 are judged for each
    shared = [s for s in result.steps if s.phase == "ramp" and len(s.verdicts) == 2]
    assert [s.value for s in shared][:2] == [4.0, 8.0]


def test_a_confirmation_short_of_samples_stays_unconfirmed_not_stepped_down() -> None:
    """A confirmation too short for its evidence (no breach, too few requests to bound the
    p99) leaves the knee unconfirmed: stepping down would only hold fewer requests."""
    world = World(5.5, per_unit_rate=1.0, good_frac=0.0)
    plan = KneePlan(start=4, factor=2, max_value=100, min_step_s=1, max_step_s=5, confirm_s=4)
    result, _ = drive(plan, world)
    confirms = [s for s in result.steps if s.phase == "confirm"]
    assert len(confirms) == 1, [(s.value, s.verdict, s.basis) for s in confirms]
    assert (confirms[0].verdict, confirms[0].basis) == ("undecided", "too few samples")
    assert not result.sustained
    assert result.knee == confirms[0].value <= 5.5
    assert "too few requests to confirm" in result.reason and "--confirm-s" in result.reason


def test_steps_too_short_for_a_steady_state_test_are_judged_on_their_points_and_say_so() -> None:
    """A request lives 4 s and a step may last 12 s: three batches where the test needs four.
    That is no evidence against the server (the UI's `a` with a short --max-step once walked
    down to 0.03 req/s, judging every step "unsteady"): the steps are judged on their point
    estimates, the knee's confidence is at most low, and the note says how long to hold."""
    world = World(5.5, per_unit_rate=30, e2e_s=8.0)  # E2E p50 4 s
    plan = KneePlan(start=2, factor=2, max_value=100, min_step_s=3, max_step_s=12, confirm_s=40)
    result, _ = drive(plan, world)
    assert result.knee is not None and 2.5 <= result.knee <= 5.5 < result.first_bad  # type: ignore[operator]
    assert all(s.basis != "unsteady" for s in result.steps)
    assert result.confidence in ("low", "none")
    note = next(n for n in result.confidence_notes if n.startswith("steps of 12 s"))
    assert "raise --max-step to at least" in note
