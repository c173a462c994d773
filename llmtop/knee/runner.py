"""`llmtop knee`, headless: drive one LoadSession through the knee search (`llmtop.knee.search`).

One load process for the whole search; each decision of the state machine becomes a rate
(or concurrency) change, which starts a new collector step. A step is judged on its own
collector step only (requests belong to the step in which they were *scheduled*), so the
warm-up segment before it and the requests of other steps never mix in.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from llmtop.config import RunConfig
from llmtop.knee.document import knee_document, print_knee, snapshot_knee, step_line
from llmtop.knee.search import (
    Done,
    Drain,
    KneePlan,
    KneeResult,
    KneeSearch,
    LimitObs,
    SetLoad,
    StepObs,
)
from llmtop.metrics.collector import Collector, Step
from llmtop.metrics.figures import Figures, Waiting, step_figures, waiting_past
from llmtop.metrics.hdr import count_above_us, mean_us, stddev_us
from llmtop.output.console import write_json_output
from llmtop.output.writable import HeldSignals
from llmtop.session import Interrupts, LoadSession, drive
from llmtop.slo import RATE_METRICS, Slo

OBSERVE_EVERY_S = 0.25


# -- reading a collector step -------------------------------------------------------------
def limit_observations(
    step: Step,
    slo: Slo,
    figures: Figures | None = None,
    collector: Collector | None = None,
) -> tuple[LimitObs, ...]:
    """Each limit's value, sample count, exceedances and mean in one step (from `figures`).

    With the collector, a request of the step still in flight that already went past a
    TTFT or E2E limit counts as a sample beyond it (it will end there): in overload the
    completed requests are the early, fast ones, and those waiting tell the rest.
    """
    out = []
    f = figures if figures is not None else step_figures(step)
    c = f.counts
    for limit in slo.limits:
        upper = limit.op in ("<=", "<")
        if limit.metric in RATE_METRICS:
            done = f.done
            out.append(
                LimitObs(
                    limit.text,
                    "rate",
                    limit.threshold,
                    f.error_rate if done else math.nan,
                    done,
                    c.failed,
                    limit.threshold,
                    upper=upper,
                )
            )
            continue
        h = f.histograms.get(limit.metric)
        if h is None:
            continue
        n = h.get_total_count()
        wait = (
            waiting_past(collector, step, limit.metric, limit.threshold)
            if collector is not None and upper
            else Waiting(0, math.nan, math.nan)
        )
        value = f.value_ms(limit.metric, limit.stat)
        pct = limit.percentile
        if wait.count and pct is not None:
            # the quantile of the measured and the waiting (beyond the limit) together
            rank = math.ceil(pct / 100 * (n + wait.count))
            value = h.get_value_at_percentile(100 * rank / n) / 1000 if rank <= n else math.nan
            if math.isnan(value):
                value = wait.shortest_ms
        elif wait.count and limit.stat == "max":
            value = max(value, wait.longest_ms) if not math.isnan(value) else wait.longest_ms
        exceed = count_above_us(h, limit.threshold * 1000) if n else 0
        kind = (
            "quantile"
            if pct is not None
            else limit.stat
            if limit.stat in ("mean", "max")
            else "other"
        )
        out.append(
            LimitObs(
                limit.text,
                kind,  # type: ignore[arg-type]
                limit.threshold,
                value,
                n + wait.count,
                exceed + wait.count,
                pct / 100 if pct is not None else None,
                stddev_us(h) / 1000 if n > 1 else math.nan,
                upper,
                mean=mean_us(h) / 1000 if n else math.nan,
                censored=wait.count,
            )
        )
    return tuple(out)


def observe_step(
    step: Step,
    slo: Slo,
    now_ns: int,
    in_flight: int = 0,
    client_cpu: float = math.nan,
    collector: Collector | None = None,
    sent: int = -1,
) -> StepObs:
    """The knee machine's view of one collector step."""
    f = step_figures(step, now_ns)
    c = f.counts
    return StepObs(
        completed=c.completed,
        failed=c.failed,
        limits=limit_observations(step, slo, f, collector),
        e2e_p99_s=f.value_ms("e2el", "p99") / 1000,
        e2e_max_s=f.value_ms("e2el", "max") / 1000,
        e2e_p50_s=f.value_ms("e2el", "p50") / 1000,
        send_slip_p99_ms=f.value_ms("send_slip", "p99"),
        slot_wait_p99_ms=f.value_ms("queue_wait", "p99"),
        client_cpu=client_cpu,
        in_flight=in_flight,
        sent=sent,
        request_throughput=f.per_s(c.completed, math.nan),
        output_throughput=f.per_s(c.output_tokens, math.nan),
        goodput=f.per_s(c.good, math.nan),
    )


# -- the run ------------------------------------------------------------------------------
@dataclass
class KneeRun:
    result: KneeResult
    data: dict[str, Any]  # the --json document
    interrupted: bool
    failure: str | None = None
    notes: list[str] = field(default_factory=list)


class KneeRunner:
    """Applies the machine's decisions to a LoadSession and feeds it step observations."""

    def __init__(self, session: LoadSession, plan: KneePlan, log: TextIO | None = None) -> None:
        self.session = session
        self.plan = plan
        self.search = KneeSearch(plan)
        self.log = log
        self.judged: dict[int, int] = {}  # knee step index -> collector step index
        self._judged_idx: int | None = None
        self._paused = False
        self._cpu_mark: tuple[float, int] | None = None
        self._reported = 0
        self._events = 0

    def _now_s(self) -> float:
        return time.perf_counter_ns() / 1e9

    def apply(self, d: Any) -> None:
        s = self.session
        if isinstance(d, SetLoad):
            if self.plan.mode == "concurrency":
                s.set_concurrency(int(d.value), d.label)
            else:
                s.set_rate(d.value, d.label)
            if self._paused:
                s.resume()
                self._paused = False
            if d.measure:
                self._judged_idx = len(s.collector.steps) - 1
                cur = self.search.current
                if cur is not None:
                    self.judged[cur.index] = self._judged_idx
                st = s.status
                self._cpu_mark = (st.load_cpu_s, st.t_ns) if st else None
        elif isinstance(d, Drain):
            s.pause()
            self._paused = True
            cur = self.search.current
            s.set_rate(cur.value if cur else 0.0, d.label)

    def observation(self) -> StepObs:
        s = self.session
        now = time.perf_counter_ns()
        st = s.status
        in_flight = (st.in_flight + st.queued) if st else 0
        cpu = math.nan
        if st is not None and self._cpu_mark is not None and st.t_ns > self._cpu_mark[1] + 5e8:
            cpu = (st.load_cpu_s - self._cpu_mark[0]) / ((st.t_ns - self._cpu_mark[1]) / 1e9)
        sent = st.sent if st else -1
        if self._judged_idx is None:
            return StepObs(in_flight=in_flight, sent=sent)
        step = s.collector.steps[self._judged_idx]
        return observe_step(step, s.slo, now, in_flight, cpu, s.collector, sent)

    def new_lines(self) -> list[str]:
        """One line per step that got its verdict, and per event (a re-check that flipped a
        verdict, a confirmation that did not hold), since the last call."""
        out = []
        for step in self.search.steps[self._reported :]:
            if step.verdict is None:
                break
            out.append(step_line(step, self.plan))
            self._reported += 1
        for event in self.search.events[self._events :]:
            out.append(f"knee: {event}")
            self._events += 1
        return out

    def report_new(self) -> None:
        """The new lines, live on the log."""
        lines = self.new_lines()
        if self.log is None or not lines:
            return
        self.log.write("\n".join(lines) + "\n")
        self.log.flush()

    def release(self) -> None:
        """The search is over (or was stopped): never leave the arrivals paused by a drain."""
        if self._paused:
            self.session.resume()
            self._paused = False


def run_knee(
    config: RunConfig,
    extra: dict[str, Any],
    slo: Slo,
    plan: KneePlan,
    json_path: str | None = None,
    save_path: str | None = None,
    out: TextIO | None = None,
    log: TextIO | None = None,
) -> KneeRun:
    """Search for the knee; print the steps and the answer; write --json / --save.

    A signal outside the load (whose own Interrupts stop it gracefully), while the answer is
    built and written, waits for the outputs and then counts as an interruption.
    """
    with HeldSignals() as held:
        try:
            run = _run_knee(config, extra, slo, plan, json_path, save_path, out, log)
        finally:
            late = held.consume()
    if late:
        run.interrupted = True
    return run


def _run_knee(
    config: RunConfig,
    extra: dict[str, Any],
    slo: Slo,
    plan: KneePlan,
    json_path: str | None,
    save_path: str | None,
    out: TextIO | None,
    log: TextIO | None,
) -> KneeRun:
    out = out if out is not None else sys.stdout
    log = log if log is not None else sys.stderr
    session = LoadSession(config, slo)
    runner = KneeRunner(session, plan, log)
    result: KneeResult | None = None
    next_obs = 0.0

    def on_frame(frame: Any) -> bool:
        """One observation every OBSERVE_EVERY_S; True (stop the load) once the search ends."""
        nonlocal result, next_obs
        if result is not None:
            return True
        if time.monotonic() < next_obs:
            return False
        next_obs = time.monotonic() + OBSERVE_EVERY_S
        d = runner.search.observe(runner._now_s(), runner.observation())
        runner.report_new()
        if isinstance(d, Done):
            result = d.result
            return True
        runner.apply(d)
        return False

    with Interrupts() as interrupts:
        session.start()
        runner.apply(runner.search.start(runner._now_s()))
        ended = drive(session, on_frame, interrupts)
    interrupted = ended.interrupted and result is None
    if result is None:
        why = "interrupted" if interrupted else session.failure or "the load process stopped"
        result = runner.search.stop(runner._now_s(), why).result
    runner.report_new()
    assert result is not None
    data = knee_document(session, runner.judged, result, slo, plan, extra)
    data["interrupted"] = interrupted
    data["failure"] = session.failure_record()
    from llmtop.output.snapshot import build_snapshot, save_snapshot
    from llmtop.output.writable import write_each

    def save() -> None:
        knee = snapshot_knee(data)
        save_snapshot(str(save_path), build_snapshot(session, extra, knee=knee))

    # each output on its own: one that fails costs neither the other nor the table
    failed = write_each(
        [
            ("--json", json_path, lambda: write_json_output(str(json_path), data)),
            ("--save", save_path, save),
        ]
    )
    print_knee(data, result, plan, out)
    problems = [session.failure.splitlines()[0]] if session.failure else []
    return KneeRun(result, data, interrupted, "; ".join(problems + list(failed.values())) or None)
