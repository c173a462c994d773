"""Deterministic telemetry for snapshot tests and docs: a fixed ramp, no process, no clock.

Frames are built from a few numbers per second of a pretend run (the rate rising in steps,
latency rising with it); nothing here reads the time, so pictures are identical every run.
"""

from __future__ import annotations

import math

from llmtop.metrics.hdr import MetricSummary
from llmtop.metrics.telemetry import Telemetry
from llmtop.slo import Slo
from llmtop.tui.model import RunInfo, StepPoint

DEMO_SLO = "ttft_p99<=1s,tpot_p99<=50ms"


def summary(p50: float, p99: float, count: int = 500) -> MetricSummary:
    return MetricSummary(count, (p50 + p99) / 2, p50, (p50 + p99) / 2, p99, p99 * 1.1, p99 * 1.2)


def frame(
    elapsed_s: float,
    rate: float,
    ttft_p99: float,
    tpot_p99: float,
    slo: Slo,
    failed: int = 0,
    server: dict[str, float] | None = None,
    paused: bool = False,
) -> Telemetry:
    """One frame: p50s are fixed fractions of the p99s; the SLO is judged on the p99s."""
    values = {"ttft": ttft_p99, "tpot": tpot_p99, "itl": tpot_p99 * 1.4, "e2el": 0.0}
    e2e = ttft_p99 * 0.6 + tpot_p99 * 0.7 * 255
    values["e2el"] = e2e
    done = max(int(rate * elapsed_s), 1)
    results = slo.evaluate(lambda m, st: values.get(m, math.nan), failed / (done + failed))
    achieved = rate * 0.98 if ttft_p99 < 1500 else rate * 0.85
    return Telemetry(
        t_ns=int(elapsed_s * 1e9),
        elapsed_s=elapsed_s,
        phase="measuring",
        offered_rate=rate,
        paused=paused,
        sent=int(rate * elapsed_s) + 3,
        in_flight=int(rate * e2e / 1000),
        queued=0,
        completed=done,
        failed=failed,
        errors={"http_503": failed} if failed else {},
        window_s=10.0,
        window={
            "ttft": summary(ttft_p99 * 0.55, ttft_p99),
            "tpot": summary(tpot_p99 * 0.7, tpot_p99),
            "itl": summary(tpot_p99 * 0.6, tpot_p99 * 1.4),
            "e2el": summary(e2e * 0.8, e2e),
            "send_slip": summary(0.08, 0.31),
            "queue_wait": summary(0.0, 0.0),
        },
        request_rate=achieved,
        output_tps=achieved * 256,
        total_tps=achieved * (256 + 1024),
        load_cpu_s=elapsed_s * 0.06,
        precise_pacer=True,
        connections=int(rate * 4),
        goodput=achieved * (1.0 if all(r.ok for r in results) else 0.7),
        slo=tuple(results),
        step_index=0,
        server=server,
    )


# (seconds held, req/s, TTFT p99 ms, TPOT p99 ms): a ramp that breaks the SLO at the end
RAMP = ((20, 2.0, 180, 14), (20, 4.0, 230, 19), (20, 8.0, 420, 31), (20, 12.0, 1350, 58))


def ramp(slo: Slo, seconds: int | None = None) -> tuple[list[Telemetry], tuple[StepPoint, ...]]:
    """One frame a second through RAMP (or its first `seconds`), and the steps held."""
    frames: list[Telemetry] = []
    steps: list[StepPoint] = []
    t = 0
    for i, (held, rate, ttft, tpot) in enumerate(RAMP):
        for k in range(held):
            if seconds is not None and t >= seconds:
                break
            ease = min(1.0, (k + 1) / 6)
            prev = RAMP[i - 1] if i else RAMP[0]
            f_ttft = prev[2] + (ttft - prev[2]) * ease
            f_tpot = prev[3] + (tpot - prev[3]) * ease
            server = {
                "running": round(rate * 3.2),
                "waiting": 0 if rate < 12 else 17,
                "kv_cache_usage": min(0.08 * rate, 0.97),
                "preemptions_total": 0 if rate < 12 else 4,
            }
            frames.append(frame(t + 1.0, rate, f_ttft, f_tpot, slo, server=server))
            t += 1
        held_s = min(held, max((seconds or 10**9) - sum(r[0] for r in RAMP[:i]), 0))
        if held_s:
            achieved = rate * (0.98 if ttft < 1500 else 0.85)
            ok = ttft <= 1000 and tpot <= 50 if slo else None
            steps.append(
                StepPoint(
                    i, rate, float(held_s), int(achieved * held_s), 0, achieved,
                    achieved * 256, float(ttft), float(tpot), tpot * 1.4, 3000.0, ok,
                )
            )  # fmt: skip
    return frames, tuple(steps)


def demo_info(slo: Slo | None = None) -> RunInfo:
    """The header of the pictures: a simulated vLLM on an A100."""
    return RunInfo(
        url="http://127.0.0.1:8000",
        engine="simulated: vllm on a100-80g",
        model="llama-3-8b",
        mode="open loop, Poisson",
        closed_loop=False,
        start_rate=2.0,
        slo=slo if slo is not None else Slo.parse(DEMO_SLO),
    )
