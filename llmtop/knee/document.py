"""What a knee search leaves behind: the steps table, the --json document, the printed answer."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any, TextIO

from llmtop import __version__
from llmtop.knee.search import KneePlan, KneeResult, KneeStep, Mode, StepObs
from llmtop.knee.stats import LimitObs, quantile_ci_ranks
from llmtop.metrics.catalog import LIVE_METRICS
from llmtop.metrics.collector import Step
from llmtop.metrics.figures import step_summary
from llmtop.session import LoadSession
from llmtop.slo import Slo


def steps_table(steps: Sequence[KneeStep], mode: Mode = "rate") -> list[str]:
    """Plain-text table of the steps (headless output and logs)."""
    unit = "req/s" if mode == "rate" else "conc"
    head = (
        f"{'#':>3} {unit:>8} {'phase':<7} {'verdict':<8} {'basis':<11} {'done':>6}"
        f" {'fail':>5} {'req/s':>8} {'tok/s':>9} {'good/s':>8}  limits"
    )
    lines = [head]
    for s in steps:
        o = s.obs or StepObs()
        lim = "  ".join(
            f"{lo.text.split('<')[0].split('>')[0]}={_fmt_val(lo)}{'' if lo.point_ok else '!'}"
            for lo in o.limits
        )
        lines.append(
            f"{s.index:>3} {s.value:>8g} {s.phase:<7} {s.verdict or '-':<8} {s.basis or '-':<11}"
            f" {o.completed:>6} {o.failed:>5} {_num(o.request_throughput):>8}"
            f" {_num(o.output_throughput, 0):>9} {_num(o.goodput):>8}  {lim}"
        )
    return lines


def _num(v: float, digits: int = 2) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def _fmt_val(lo: LimitObs) -> str:
    if math.isnan(lo.value):
        return "-"
    if lo.kind == "rate":
        return f"{lo.value:.1%}"
    return f"{lo.value:,.1f}ms" if lo.value < 1000 else f"{lo.value / 1000:,.2f}s"


def step_line(step: KneeStep, plan: KneePlan) -> str:
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


def percentile_ci_ms(step: Step, slo: Slo, alpha: float) -> list[dict[str, Any]]:
    """Order-statistic (distribution-free) confidence interval of each percentile limit."""
    out = []
    hists = step.all_histograms()  # live or unpacked (the collector packs old steps)
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


def knee_document(
    session: LoadSession,
    judged: dict[int, int],
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
        idx = judged.get(ks.index)
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
            for m in LIVE_METRICS:
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
