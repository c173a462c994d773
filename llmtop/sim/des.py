"""Discrete-event runs of the scheduler with a fake clock (no sleeping).

Used by the calibration test and benchmark: Poisson arrivals of fixed-length requests, the
scheduler's iterations back to back, TTFT and throughput as a benchmark client would see
them (network and HTTP costs are taken as zero).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llmtop.sim.model import SimSettings
from llmtop.sim.scheduler import Scheduler, SimRequest


@dataclass(frozen=True)
class RunResult:
    """Summary of one fixed-rate run."""

    rate: float
    requests: int
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    output_tok_s: float
    duration_s: float
    preemptions: int


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def run_poisson(
    settings: SimSettings,
    rate: float,
    num_requests: int,
    input_len: int,
    output_len: int,
    seed: int = 0,
) -> RunResult:
    """Run `num_requests` Poisson arrivals at `rate` req/s to completion on a fake clock."""
    rng = random.Random(seed)
    t = 0.0
    arrivals: list[float] = []
    for _ in range(num_requests):
        t += rng.expovariate(rate)
        arrivals.append(t)
    sched = Scheduler(settings)
    reqs = [
        SimRequest(
            rid=i, prompt_len=input_len, max_tokens=output_len, stop_at=output_len, arrival=a
        )
        for i, a in enumerate(arrivals)
    ]
    now = 0.0
    nxt = 0
    done = 0
    while done < num_requests:
        while nxt < num_requests and reqs[nxt].arrival <= now:
            sched.add(reqs[nxt])
            nxt += 1
        step = sched.schedule()
        if step is None:
            now = reqs[nxt].arrival
            continue
        now += step.duration
        done += len(sched.complete(step, now).finished)
    ttft = [r.first_token_time - r.arrival for r in reqs]  # type: ignore[operator]
    tpot = [
        (r.finish_time - r.first_token_time) / (r.output_len - 1)  # type: ignore[operator]
        for r in reqs
        if r.output_len > 1
    ]
    total_out = sum(r.output_len for r in reqs)
    # A benchmark client's clock starts at its first send, i.e. at time 0 here.
    duration = now
    return RunResult(
        rate=rate,
        requests=num_requests,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p99_s=percentile(ttft, 99),
        tpot_mean_s=sum(tpot) / len(tpot) if tpot else float("nan"),
        output_tok_s=total_out / duration if duration > 0 else 0.0,
        duration_s=duration,
        preemptions=sched.num_preemptions_total,
    )


@dataclass(frozen=True)
class BurstResult:
    """Summary of a run where every request is sent at time 0 (a closed backlog)."""

    requests: int
    output_tok_s: float
    tpot_p50_s: float
    ttft_p50_s: float
    duration_s: float


def run_burst(
    settings: SimSettings, num_requests: int, input_len: int, output_len: int
) -> BurstResult:
    """All `num_requests` queued at once, run to completion on a fake clock.

    The study's scenario 1 sends 4096 requests at once and lets the batch cap
    (`max_num_seqs`) decide how many run; throughput is total output / total time.
    """
    sched = Scheduler(settings)
    reqs = [
        SimRequest(
            rid=i, prompt_len=input_len, max_tokens=output_len, stop_at=output_len, arrival=0.0
        )
        for i in range(num_requests)
    ]
    for r in reqs:
        sched.add(r)
    now = 0.0
    done = 0
    while done < num_requests:
        step = sched.schedule()
        assert step is not None, "a queued request never fits the KV cache"
        now += step.duration
        done += len(sched.complete(step, now).finished)
    tpot = [
        (r.finish_time - r.first_token_time) / (r.output_len - 1)  # type: ignore[operator]
        for r in reqs
        if r.output_len > 1
    ]
    ttft = [r.first_token_time - r.arrival for r in reqs]  # type: ignore[operator]
    return BurstResult(
        requests=num_requests,
        output_tok_s=sum(r.output_len for r in reqs) / now,
        tpot_p50_s=percentile(tpot, 50),
        ttft_p50_s=percentile(ttft, 50),
        duration_s=now,
    )
