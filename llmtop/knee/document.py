"""What a knee search leaves behind: the steps table, the --json document, the printed answer.

One rule keeps the output from contradicting itself: every figure printed or written for a
step is read once, from its collector step *after* its late requests came back
(`knee_document`), and the table, the knee line and the JSON all print those. The figures
the verdict was made on (a request or two fewer) are kept beside them as
`completed_at_verdict` and `limits`.
"""

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


def _limit_name(text: str) -> str:
    return text.split("<")[0].split(">")[0]


def _duplicate_names(texts: list[str]) -> set[str]:
    """Metrics limited twice (two tiers on one figure): those are shown with their limit."""
    names = [_limit_name(t) for t in texts]
    return {n for n in names if names.count(n) > 1}


def steps_table(steps: Sequence[KneeStep | dict[str, Any]], mode: Mode = "rate") -> list[str]:
    """Plain-text table of the steps: from the document's step dicts (final figures) or,
    while the search runs, from the machine's steps (figures at the verdict)."""
    unit = "req/s" if mode == "rate" else "conc"
    head = (
        f"{'#':>3} {unit:>8} {'phase':<7} {'verdict':<8} {'basis':<11} {'held':>6} {'done':>6}"
        f" {'fail':>5} {'req/s':>8} {'tok/s':>9} {'good/s':>8}  limits"
    )
    lines = [head]
    for s in steps:
        d = s if isinstance(s, dict) else _live_row(s)
        los = d.get("slo") or d.get("limits") or []
        dup = _duplicate_names([lo["limit"] for lo in los])
        lim = "  ".join(
            f"{lo['limit'] if _limit_name(lo['limit']) in dup else _limit_name(lo['limit'])}"
            f"={_fmt_value(lo['value'], lo['limit'])}"
            f"{'' if lo.get('ok', True) else '!'}"
            for lo in los
        )
        tiers = d.get("tiers")
        if tiers:
            lim += "   " + " ".join(f"{k}:{v['verdict']}" for k, v in tiers.items())
        lines.append(
            f"{d['index']:>3} {d['value']:>8g} {d['phase']:<7} {d['verdict'] or '-':<8}"
            f" {(d['basis'] or '-')[:11]:<11} {d.get('measured_s') or 0:>5.0f}s"
            f" {d['completed']:>6} {d['failed']:>5} {_num(d.get('request_throughput')):>8}"
            f" {_num(d.get('output_throughput'), 0):>9} {_num(d.get('goodput')):>8}  {lim}"
        )
    return lines


def _live_row(s: KneeStep) -> dict[str, Any]:
    o = s.obs or StepObs()
    return {
        "index": s.index,
        "value": s.value,
        "phase": s.phase,
        "verdict": s.verdict,
        "basis": s.basis,
        "measured_s": s.measured_s,
        "completed": o.completed,
        "failed": o.failed,
        "request_throughput": o.request_throughput,
        "output_throughput": o.output_throughput,
        "goodput": o.goodput,
        "limits": [{"limit": lo.text, "value": lo.value, "ok": lo.point_ok} for lo in o.limits],
    }


def _num(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def _fmt_value(value: Any, text: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if text.startswith("error_rate"):
        return f"{value:.1%}"
    return f"{value:,.1f}ms" if value < 1000 else f"{value / 1000:,.2f}s"


def _fmt_val(lo: LimitObs) -> str:
    return _fmt_value(lo.value, lo.text)


def step_line(step: KneeStep, plan: KneePlan) -> str:
    """The live line of one finished step (the figures its verdict was made on)."""
    o = step.at_verdict or step.obs or StepObs()
    unit = "req/s" if plan.mode == "rate" else "concurrent"
    dup = _duplicate_names([lo.text for lo in o.limits])
    limits = ", ".join(
        f"{lo.text if _limit_name(lo.text) in dup else _limit_name(lo.text)} {_fmt_val(lo)}"
        + (f" ({lo.censored} still waiting past it)" if lo.censored else "")
        for lo in o.limits
        if not math.isnan(lo.value)
    )
    flag = "  [" + "; ".join(step.warnings) + "]" if step.warnings else ""
    if step.note:
        flag += f"  ({step.note})"
    tiers = ""
    if len(step.verdicts) > 1:
        names = [t.name for t in plan.tiers]
        tiers = "  tiers " + ", ".join(
            f"{names[t] if t < len(names) and names[t] else t}:{v}"
            for t, (v, _) in sorted(step.verdicts.items())
        )
    return (
        f"knee: step {step.index} {step.value:g} {unit} ({step.phase}) -> {step.verdict}"
        f" ({step.basis}, {o.completed} done, {step.measured_s:.1f} s)  {limits}{tiers}{flag}"
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
                "value_ms": h.get_value_at_percentile(pct) / 1000 if n else None,
                "low_ms": h.get_value_at_percentile(100 * lo_r / n) / 1000 if lo_r else None,
                "high_ms": h.get_value_at_percentile(100 * hi_r / n) / 1000 if hi_r else None,
            }
        )
    return out


_FINAL_KEYS = (
    "duration_s",
    "completed",
    "failed",
    "request_throughput",
    "output_throughput",
    "goodput",
    "error_rate",
)


def tier_slo(slo: Slo, plan: KneePlan, tier: int) -> Slo:
    """The limits of one tier (the whole SLO without tiers)."""
    if not plan.tiers:
        return slo
    return Slo(tuple(slo.limits[i] for i in plan.tiers[tier].limits))


def knee_document(
    session: LoadSession,
    judged: dict[int, int],
    result: KneeResult,
    slo: Slo,
    plan: KneePlan,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The --json document: the knee (and every tier's), every step, the SLO, the plan."""
    now = time.perf_counter_ns()
    steps = []
    collector_steps = session.collector.steps
    names = [t.name for t in plan.tiers] if plan.tiers else [None]
    for ks in result.steps:
        d = ks.as_dict(names)
        idx = judged.get(ks.index)
        if idx is not None and idx < len(collector_steps):
            cs = collector_steps[idx]
            final = step_summary(cs, slo, now)  # with the stragglers that came back later
            d["collector_step"] = idx
            for key in _FINAL_KEYS:
                if key in final:
                    d[key] = final[key]
            for m in LIVE_METRICS:
                d[f"{m}_ms"] = final[f"{m}_ms"]
            d["slo"] = final.get("slo")
            # the point estimates of the final figures, and the verdict: a step that broke
            # the SLO through its backlog or a trend may still read within it on the figures
            # of the requests that completed, which is what `point_ok` says
            d["point_ok"] = final.get("slo_ok")
            d["percentile_ci"] = percentile_ci_ms(cs, slo, plan.alpha)
        d["slo_ok"] = None if ks.verdict not in ("good", "bad") else ks.verdict == "good"
        steps.append(d)
    by_index = {s["index"]: s for s in steps}

    def with_figures(k: dict[str, Any], step: KneeStep | None, tier: int) -> dict[str, Any]:
        s = by_index.get(step.index) if step is not None else None
        if s is not None:
            for key in ("request_throughput", "output_throughput", "goodput"):
                k[key] = s.get(key)
            k["held_s"] = s.get("measured_s")
            k["held_requests"] = s.get("completed")
            k["slo_values"] = s.get("slo")
            tslo = tier_slo(slo, plan, tier)
            ci = s.get("percentile_ci") or []
            texts = {lim.text for lim in tslo.limits}
            k["percentile_ci"] = [c for c in ci if c["limit"] in texts]
        else:
            k["percentile_ci"] = []
        return k

    knee = with_figures(result.as_dict(), result.knee_step, 0)
    knees = []
    for tk in result.knees or []:
        k = with_figures(tk.as_dict(result.mode), tk.knee_step, tk.tier)
        k["slo"] = tier_slo(slo, plan, tk.tier).text
        knees.append(k)
    if knees:
        knee["slo"] = knees[0]["slo"]
    best = max(
        (s for s in steps if s["verdict"] == "good" and s.get("output_throughput") is not None),
        key=lambda s: s["output_throughput"] or 0.0,
        default=None,
    )
    knee["best_output_throughput_step"] = best["index"] if best else None
    plan_d = dataclasses.asdict(plan)
    doc: dict[str, Any] = {
        "knee": knee,
        "knees": knees,
        "steps": steps,
        "slo": slo.text,
        "plan": plan_d,
        "summary": session.summary(),
        "llmtop_version": __version__,
    }
    doc.update({k: v for k, v in extra.items() if k not in doc})
    return doc


def snapshot_knee(data: dict[str, Any]) -> dict[str, Any]:
    """The knee as a snapshot keeps it: the knee's own keys at the top (`knee.rate`,
    `knee.value`, what `compare` and `report` read), with its steps and tiers beside them."""
    return {**data["knee"], "steps": data["steps"], "knees": data.get("knees", [])}


def _knee_line(k: dict[str, Any], unit: str) -> list[str]:
    """The answer for one tier: the knee, what was held and for how long, its interval."""
    if k.get("value") is None:
        return [f"none: {k.get('reason', '')}"]
    value = f"{k['value']:g} {unit}"
    if k.get("sustained"):
        head = f"{value}, sustained (held {k.get('held_s') or 0:.0f} s in a steady state)"
    elif k.get("first_bad") is not None:
        head = f"between {k['value']:g} and {k['first_bad']:g} {unit}, unconfirmed"
    else:
        head = f"at least {value}, unconfirmed"
    lines = [
        head,
        f"{_f(k.get('request_throughput'))} req/s   {_f(k.get('output_throughput'), 0)}"
        f" output tok/s   goodput {_f(k.get('goodput'))} req/s",
    ]
    for ci in k.get("percentile_ci") or []:
        lo = "-" if ci["low_ms"] is None else f"{ci['low_ms']:,.1f}"
        hi = "too few samples" if ci["high_ms"] is None else f"{ci['high_ms']:,.1f}"
        val = "-" if ci.get("value_ms") is None else f"{ci['value_ms']:,.1f} ms"
        lines.append(
            f"{ci['limit']}: {val}, {ci['level']:.0%} interval [{lo}, {hi}] ms"
            f" from {ci['n']} samples"
        )
    return lines


def print_knee(data: dict[str, Any], result: KneeResult, plan: KneePlan, out: TextIO) -> None:
    lines = ["", f"knee search  SLO {data['slo']}  ({result.reason})", ""]
    lines.extend(steps_table(data["steps"], plan.mode))
    lines.append("")
    unit = "req/s" if plan.mode == "rate" else "concurrent"
    knees = data.get("knees") or [data["knee"]]
    for k in knees:
        name = f"knee {k['tier']}" if k.get("tier") and len(knees) > 1 else "knee"
        body = _knee_line(k, unit)
        lines.append(f"{name:<11} {body[0]}")
        lines.extend(f"{'':<11} {b}" for b in body[1:])
        if len(knees) > 1:
            lines.append(f"{'':<11} SLO {k.get('slo', '')}; confidence {k['confidence']}")
    k = data["knee"]
    lines.append(
        f"confidence  {k['confidence']}" + ("" if result.complete else " (search not finished)")
    )
    lines.extend(f"            {n}" for n in k["confidence_notes"])
    for w in k["warnings"]:
        lines.append(f"warning     {w}")
    budget = f" (budget {result.budget_s:g} s)" if result.budget_s else ""
    lines.append(f"took        {result.duration_s:.1f} s{budget}")
    out.write("\n".join(lines) + "\n")
    out.flush()


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"
