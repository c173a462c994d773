"""`llmtop knee`, headless: drive one LoadSession through the knee search (`llmtop.knee.search`).

One load process for the whole search; each decision of the state machine becomes a rate
(or concurrency) change, which starts a new collector step. A step is judged on its own
collector step only (requests belong to the step in which they were *scheduled*), so the
warm-up segment before it and the requests of other steps never mix in.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from hdrh.histogram import HdrHistogram

from llmtop import __version__
from llmtop.cli.run import Interrupts
from llmtop.config import RunConfig
from llmtop.knee.search import (
    Done,
    Drain,
    KneePlan,
    KneeResult,
    KneeSearch,
    KneeStep,
    LimitObs,
    SetLoad,
    StepObs,
    quantile_ci_ranks,
    steps_table,
)
from llmtop.metrics.collector import Step, error_rate, step_summary
from llmtop.output.console import write_json_output
from llmtop.session import LoadSession
from llmtop.slo import RATE_METRICS, Slo, histogram_value_ms

STOP_GRACE_S = 5.0
OBSERVE_EVERY_S = 0.25


# -- reading a collector step -------------------------------------------------------------
def count_above(h: HdrHistogram, threshold_us: float) -> int:
    """Samples whose (HDR-equivalent) value is above the threshold, as percentiles see it."""
    n = 0
    for it in h.get_recorded_iterator():
        if it.value_iterated_to > threshold_us:
            n += it.count_added_in_this_iter_step
    return n


def _hists(step: Step) -> dict[str, HdrHistogram]:
    """A step's histograms, live or unpacked (the collector packs away old steps)."""
    all_h = getattr(step, "all_histograms", None)
    return all_h() if all_h is not None else step.histograms


def limit_observations(
    step: Step, slo: Slo, hists: dict[str, HdrHistogram] | None = None
) -> tuple[LimitObs, ...]:
    out = []
    c = step.counts
    hists = hists if hists is not None else _hists(step)
    for limit in slo.limits:
        upper = limit.op in ("<=", "<")
        if limit.metric in RATE_METRICS:
            done = c.completed + c.failed
            out.append(
                LimitObs(
                    limit.text,
                    "rate",
                    limit.threshold,
                    error_rate(c) if done else math.nan,
                    done,
                    c.failed,
                    limit.threshold,
                    upper=upper,
                )
            )
            continue
        h = hists.get(limit.metric)
        if h is None:
            continue
        n = h.get_total_count()
        value = histogram_value_ms(hists, limit.metric, limit.stat)
        exceed = count_above(h, limit.threshold * 1000) if n else 0
        pct = limit.percentile
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
                n,
                exceed,
                pct / 100 if pct is not None else None,
                h.get_stddev() / 1000 if n > 1 else math.nan,
                upper,
            )
        )
    return tuple(out)


def _p(h: HdrHistogram, pct: float) -> float:
    return h.get_value_at_percentile(pct) / 1000 if h.get_total_count() else math.nan


def observe_step(
    step: Step,
    slo: Slo,
    now_ns: int,
    in_flight: int = 0,
    client_cpu: float = math.nan,
) -> StepObs:
    """The knee machine's view of one collector step."""
    h = _hists(step)
    dur = step.duration_s(now_ns)
    c = step.counts
    e2e = h["e2el"]
    return StepObs(
        completed=c.completed,
        failed=c.failed,
        limits=limit_observations(step, slo, h),
        e2e_p99_s=_p(e2e, 99.0) / 1000,
        e2e_max_s=(e2e.get_max_value() / 1e6) if e2e.get_total_count() else math.nan,
        send_slip_p99_ms=_p(h["send_slip"], 99.0),
        slot_wait_p99_ms=_p(h["queue_wait"], 99.0),
        client_cpu=client_cpu,
        in_flight=in_flight,
        request_throughput=c.completed / dur if dur else math.nan,
        output_throughput=c.output_tokens / dur if dur else math.nan,
        goodput=c.good / dur if dur else math.nan,
    )


def percentile_ci_ms(step: Step, slo: Slo, alpha: float) -> list[dict[str, Any]]:
    """Order-statistic (distribution-free) confidence interval of each percentile limit."""
    out = []
    hists = _hists(step)
    for limit in slo.limits:
        pct = limit.percentile
        h = hists.get(limit.metric)
        if pct is None or h is None:
            continue
        n = h.get_total_count()
        lo_r, hi_r = quantile_ci_ranks(n, pct / 100, alpha)
        out.append(
            {
                "limit": limit.text,
                "n": n,
                "level": 1 - alpha,
                "low_ms": h.get_value_at_percentile(100 * lo_r / n) / 1000 if lo_r else None,
                "high_ms": h.get_value_at_percentile(100 * hi_r / n) / 1000 if hi_r else None,
            }
        )
    return out


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
        if self._judged_idx is None:
            return StepObs(in_flight=in_flight)
        step = s.collector.steps[self._judged_idx]
        return observe_step(step, s.slo, now, in_flight, cpu)

    def report_new(self) -> None:
        """One live line per finished step."""
        if self.log is None:
            return
        for step in self.search.steps[self._reported :]:
            if step.verdict is None:
                break
            self.log.write(_step_line(step, self.plan) + "\n")
            self.log.flush()
            self._reported += 1


def _step_line(step: KneeStep, plan: KneePlan) -> str:
    o = step.obs or StepObs()
    unit = "req/s" if plan.mode == "rate" else "concurrent"
    limits = ", ".join(
        f"{lo.text.split('<')[0]} {lo.value:,.1f}{'ms' if lo.kind != 'rate' else ''}"
        if lo.kind != "rate"
        else f"error rate {lo.value:.1%}"
        for lo in o.limits
        if not math.isnan(lo.value)
    )
    flag = "  [" + "; ".join(step.warnings) + "]" if step.warnings else ""
    if step.note:
        flag += f"  ({step.note})"
    return (
        f"knee: step {step.index} {step.value:g} {unit} ({step.phase}) -> {step.verdict}"
        f" ({step.basis}, {o.completed} done, {step.measured_s:.1f} s)  {limits}{flag}"
    )


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
    """Search for the knee; print the steps and the answer; write --json / --save."""
    out = out if out is not None else sys.stdout
    log = log if log is not None else sys.stderr
    session = LoadSession(config, slo)
    runner = KneeRunner(session, plan, log)
    interrupted = False
    result: KneeResult | None = None
    with Interrupts() as interrupts:
        session.start()
        try:
            runner.apply(runner.search.start(runner._now_s()))
            next_obs = time.monotonic()
            while result is None:
                session.pump(0.05)
                if interrupts.count:
                    interrupted = True
                    result = runner.search.stop(runner._now_s(), "interrupted").result
                    break
                if session.finished:
                    why = session.failure or "the load process stopped"
                    result = runner.search.stop(runner._now_s(), why).result
                    break
                if time.monotonic() < next_obs:
                    continue
                next_obs = time.monotonic() + OBSERVE_EVERY_S
                d = runner.search.observe(runner._now_s(), runner.observation())
                runner.report_new()
                if isinstance(d, Done):
                    result = d.result
                else:
                    runner.apply(d)
            runner.report_new()
            session.stop(cancel_in_flight=True)
            deadline = time.monotonic() + STOP_GRACE_S
            while not session.finished and time.monotonic() < deadline and interrupts.count < 2:
                session.pump(0.05)
            session.drain_shipped()
        finally:
            session.close()
            session.tick(time.perf_counter_ns())
    assert result is not None
    data = knee_document(session, runner, result, slo, plan, extra)
    data["interrupted"] = interrupted
    if json_path:
        write_json_output(json_path, data)
    if save_path:
        from llmtop.output.snapshot import build_snapshot, save_snapshot

        snap = build_snapshot(session, extra, knee={"knee": data["knee"], "steps": data["steps"]})
        save_snapshot(save_path, snap)
    print_knee(data, result, plan, out)
    return KneeRun(result, data, interrupted, session.failure)


def knee_document(
    session: LoadSession,
    runner: KneeRunner,
    result: KneeResult,
    slo: Slo,
    plan: KneePlan,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The --json document: the knee, every step, the SLO, the plan and the target."""
    now = time.perf_counter_ns()
    steps = []
    collector_steps = session.collector.steps
    for ks in result.steps:
        d = ks.as_dict()
        idx = runner.judged.get(ks.index)
        if idx is not None and idx < len(collector_steps):
            cs = collector_steps[idx]
            final = step_summary(cs, slo, now)  # with the stragglers that came back later
            d["collector_step"] = idx
            for key in (
                "duration_s",
                "completed",
                "failed",
                "request_throughput",
                "output_throughput",
                "goodput",
                "error_rate",
                "slo",
                "slo_ok",
            ):
                if key in final:
                    d[key] = final[key]
            for m in ("ttft", "tpot", "itl", "e2el", "send_slip", "queue_wait"):
                d[f"{m}_ms"] = final[f"{m}_ms"]
            d["percentile_ci"] = percentile_ci_ms(cs, slo, plan.alpha)
        steps.append(d)
    knee = result.as_dict()
    if result.knee_step is not None:
        ks = next((s for s in steps if s["index"] == result.knee_step.index), None)
        if ks is not None:
            for key in ("request_throughput", "output_throughput", "goodput"):
                knee[key] = ks.get(key)
            knee["slo_values"] = ks.get("slo")
            knee["percentile_ci"] = ks.get("percentile_ci")
    best = max(
        (s for s in steps if s["verdict"] == "good" and s.get("output_throughput") is not None),
        key=lambda s: s["output_throughput"] or 0.0,
        default=None,
    )
    knee["best_output_throughput_step"] = best["index"] if best else None
    plan_d = dataclasses.asdict(plan)
    doc: dict[str, Any] = {
        "knee": knee,
        "steps": steps,
        "slo": slo.text,
        "plan": plan_d,
        "summary": session.summary(),
        "llmtop_version": __version__,
    }
    doc.update({k: v for k, v in extra.items() if k not in doc})
    return doc


def print_knee(data: dict[str, Any], result: KneeResult, plan: KneePlan, out: TextIO) -> None:
    lines = ["", f"knee search  SLO {data['slo']}  ({result.reason})", ""]
    lines.extend(steps_table(result.steps, plan.mode))
    lines.append("")
    k = data["knee"]
    unit = "req/s" if plan.mode == "rate" else "concurrent requests"
    if k["value"] is None:
        lines.append(f"knee        none: {result.reason}")
    else:
        lines.append(
            f"knee        {k['value']:g} {unit}   "
            f"{_f(k.get('request_throughput'))} req/s   "
            f"{_f(k.get('output_throughput'), 0)} output tok/s"
            f"   goodput {_f(k.get('goodput'))} req/s"
        )
    lines.append(
        f"confidence  {k['confidence']}" + ("" if result.complete else " (search not finished)")
    )
    lines.extend(f"            {n}" for n in k["confidence_notes"])
    for ci in k.get("percentile_ci") or []:
        lo = "-" if ci["low_ms"] is None else f"{ci['low_ms']:,.1f}"
        hi = "too few samples" if ci["high_ms"] is None else f"{ci['high_ms']:,.1f}"
        lines.append(
            f"            {ci['limit']}: {ci['level']:.0%} interval [{lo}, {hi}] ms"
            f" from {ci['n']} samples"
        )
    for w in k["warnings"]:
        lines.append(f"warning     {w}")
    lines.append(f"took        {result.duration_s:.1f} s")
    out.write("\n".join(lines) + "\n")
    out.flush()


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"
