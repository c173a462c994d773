"""What the report's knee plot draws, as plain data (no matplotlib), so it can be checked.

A knee search's snapshot holds every segment the load went through: warm-ups, the judged
stretches, drains between a bad step and the next, the settle after a confirmation. Only the
judged stretches say anything about a load, so only they are drawn: from the knee's own steps
(`knee.steps`, the figures the document printed) when the snapshot has them, otherwise from
the collector's steps without the segments' labels. The x axis is what was offered: a rate,
or a concurrency for closed-loop runs; a run that sent everything at once offered no rate,
and is drawn on an axis of its own, at the rate it achieved, saying so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtop.output.compare import snapshot_name
from llmtop.slo import RATE_METRICS, Slo, SloError

AXES = ("rate", "concurrency", "all at once")
AXIS_LABELS = {
    "rate": "offered load (req/s)",
    "concurrency": "concurrency (requests kept in flight)",
    "all at once": "achieved load (req/s): all-at-once runs offer no rate",
}
# Collector segments that are no load's measurement (llmtop.knee.search labels them).
_SEGMENT = re.compile(r"(warm-up|settle)$|^knee drain")
_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E"}


@dataclass
class Panel:
    """One row of the figure: a figure of each step, and the SLO limits drawn on it."""

    key: str  # "output_throughput", "request_throughput", "error_rate", or "ttft.p99"
    label: str
    limits: list[tuple[float, str]] = field(default_factory=list)  # (y, what it is)

    def value(self, step: dict[str, Any]) -> float:
        """This panel's figure of one step (nan when the step has none)."""
        if self.key == "error_rate":
            return 100.0 * _num(step.get("error_rate"))
        if "." not in self.key:
            return _num(step.get(self.key))
        metric, stat = self.key.split(".", 1)
        figures = step.get(f"{metric}_ms")
        if isinstance(figures, dict) and stat in figures:
            return _num(figures[stat])
        for lo in step.get("slo") or step.get("limits") or []:  # a percentile not summarised
            if isinstance(lo, dict) and _panel_key(str(lo.get("limit", ""))) == self.key:
                return _num(lo.get("value"))
        return math.nan


@dataclass
class KneeMark:
    """Where a searched knee is: its load on the x axis, its throughput on the first panel."""

    x: float
    y: float
    text: str
    sustained: bool


@dataclass
class KneeLine:
    """One snapshot's judged steps, ordered by load."""

    name: str
    axis: str
    xs: list[float]
    steps: list[dict[str, Any]]
    verdicts: list[str | None]
    knees: list[KneeMark] = field(default_factory=list)

    def path(self) -> tuple[list[float], list[dict[str, Any]]]:
        """The line through the loads: the latest step held at each (a confirmation over
        the bisection step it repeats), so a load held twice draws no vertical stroke."""
        last: dict[float, dict[str, Any]] = {}
        for x, s in zip(self.xs, self.steps, strict=True):
            last[x] = s
        return list(last), list(last.values())


@dataclass
class KneeFigure:
    axes: list[str]  # the x axes drawn side by side, of AXES
    panels: list[Panel]
    lines: list[KneeLine]


def _num(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return math.inf if v == "inf" else math.nan


def knee_of(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot's knee ({} without one); snapshots before issue 11 nested it."""
    knee = snap.get("knee") or {}
    if isinstance(knee.get("knee"), dict):
        knee = {**knee["knee"], **{k: v for k, v in knee.items() if k != "knee"}}
    return knee if isinstance(knee, dict) else {}


def legend_names(snaps: list[dict[str, Any]]) -> list[str]:
    """A name per snapshot that tells it apart from the others: its label, the engine when
    the label does not name it, then the file's stem, then when it was taken."""
    names = []
    for snap in snaps:
        name = snapshot_name(snap)
        engine = str((snap.get("engine") or {}).get("name") or "")
        if engine and engine.lower() not in name.lower():
            name = f"{name} ({engine})"
        names.append(name)
    for extra in (
        lambda s: Path(str(s.get("_path") or "")).stem,
        lambda s: str(s.get("created") or ""),
    ):
        names = [
            f"{n} · {extra(s)}" if names.count(n) > 1 and extra(s) and extra(s) not in n else n
            for n, s in zip(names, snaps, strict=True)
        ]
    return [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _axis(snap: dict[str, Any], knee: dict[str, Any]) -> str:
    if knee.get("mode") in ("rate", "concurrency"):
        return str(knee["mode"])
    plan = snap.get("plan") or {}
    return "concurrency" if plan.get("concurrency") else "rate"


def judged_steps(snap: dict[str, Any]) -> tuple[str, list[tuple[float, dict[str, Any]]]]:
    """(axis, [(x, step figures)]) of the steps that measured a load, warm-ups, drains and
    settles left out; a one-step run is its whole-run summary."""
    knee = knee_of(snap)
    axis = _axis(snap, knee)
    ksteps = knee.get("steps")
    if isinstance(ksteps, list) and ksteps and all(isinstance(s, dict) for s in ksteps):
        pts = [
            (_num(s.get("value")), s)
            for s in ksteps
            if s.get("verdict") in ("good", "bad") and (s.get("completed") or 0) > 0
        ]
        return axis, pts
    steps = [
        s
        for s in snap.get("steps") or []
        if (s.get("completed") or 0) > 0 and not _SEGMENT.search(str(s.get("label") or ""))
    ]
    summary = snap.get("summary") or {}
    if len(steps) <= 1 and summary.get("completed"):
        plan = snap.get("plan") or {}
        offered = steps[0].get("offered") if steps else plan.get("request_rate")
        if axis == "concurrency" and plan.get("concurrency"):
            offered = plan["concurrency"]
        steps = [{**summary, "offered": offered}]
    pts = [(_num(s.get("offered")), s) for s in steps]
    if axis == "rate" and pts and all(not math.isfinite(x) for x, _ in pts):
        # nothing was offered: everything was sent at once; drawn at the rate achieved
        return "all at once", [(_num(s.get("request_throughput")), s) for _, s in pts]
    return axis, [(x, s) for x, s in pts if math.isfinite(x)]


def _panel_key(limit_text: str) -> str | None:
    try:
        limit = Slo.parse(limit_text).limits[0]
    except (SloError, IndexError):
        return None
    if limit.metric in RATE_METRICS:
        return limit.metric
    return f"{limit.metric}.{limit.stat}"


def _panel_label(key: str) -> str:
    if key == "error_rate":
        return "error rate (%)"
    metric, stat = key.split(".", 1)
    return f"{_NAMES.get(metric, metric)} {stat} (ms)"


def _tier_texts(snap: dict[str, Any]) -> dict[str, list[str]]:
    """Each limit's text → the names of the tiers that hold it (empty without tiers)."""
    out: dict[str, list[str]] = {}
    for k in knee_of(snap).get("knees") or []:
        if not isinstance(k, dict) or not k.get("tier"):
            continue
        for part in str(k.get("slo") or "").split(","):
            out.setdefault(part.strip(), []).append(str(k["tier"]))
    return out


def panels_for(snaps: list[dict[str, Any]]) -> list[Panel]:
    """Throughput, request rate, then a panel per limited latency statistic (TTFT p99 and
    TPOT p99 always), each with every SLO limit on it; an error-rate panel when limited."""
    panels = {
        "output_throughput": Panel("output_throughput", "output tokens/s"),
        "request_throughput": Panel("request_throughput", "requests/s (o) · goodput (x)"),
        "ttft.p99": Panel("ttft.p99", "TTFT p99 (ms)"),
        "tpot.p99": Panel("tpot.p99", "TPOT p99 (ms)"),
    }
    held: dict[tuple[str, str], list[str]] = {}  # (panel, limit text) -> who holds it
    for snap, name in zip(snaps, legend_names(snaps), strict=True):
        try:
            slo = Slo.parse(str(snap.get("slo") or ""))
        except SloError:
            continue
        tiers = _tier_texts(snap)
        for limit in slo.limits:
            key = _panel_key(limit.text)
            if key is None:
                continue
            panels.setdefault(key, Panel(key, _panel_label(key)))
            text = limit.text
            if tiers.get(limit.text):
                text = f"{'/'.join(tiers[limit.text])}: {limit.text}"
            held.setdefault((key, text), []).append(name)
    for (key, text), names in held.items():
        limit = Slo.parse(text.split(": ")[-1]).limits[0]
        y = 100.0 * limit.threshold if key == "error_rate" else limit.threshold
        who = "" if len(names) == len(snaps) else f" ({', '.join(names)})"
        panels[key].limits.append((y, f"SLO {text}{who}"))
    return list(panels.values())


def _marks(knee: dict[str, Any], axis: str, line_xs: list[float], steps: list[dict]) -> list:
    """The knee (each tier's, when the search had tiers) as marks on the line's axis."""
    unit = "req/s" if axis == "rate" else "concurrent"
    out = []
    tiers = [k for k in knee.get("knees") or [] if isinstance(k, dict)] or [knee]
    for k in tiers:
        value = k.get("rate") if k.get("rate") is not None else k.get("concurrency")
        x = _num(value if value is not None else k.get("value"))
        if not math.isfinite(x):
            continue
        y = _num(k.get("output_throughput"))
        if math.isnan(y):  # the figure of the step nearest the knee
            near = [s for xx, s in zip(line_xs, steps, strict=True) if xx == x]
            y = _num(near[-1].get("output_throughput")) if near else math.nan
        sustained = bool(k.get("sustained"))
        head = f"knee {k['tier']}" if k.get("tier") and len(tiers) > 1 else "knee"
        how = "sustained" if sustained else "unconfirmed"
        out.append(KneeMark(x, y, f"{head} {x:g} {unit} ({how})", sustained))
    return out


def knee_figure(snaps: list[dict[str, Any]]) -> KneeFigure:
    """Everything the knee plot draws: its x axes, its panels and a line per snapshot."""
    lines = []
    for snap, name in zip(snaps, legend_names(snaps), strict=True):
        axis, pts = judged_steps(snap)
        pts = sorted((p for p in pts if not math.isnan(p[0])), key=lambda p: p[0])
        if not pts:
            continue
        xs = [x for x, _ in pts]
        steps = [s for _, s in pts]
        label = name if axis != "all at once" else f"{name} (all at once)"
        line = KneeLine(label, axis, xs, steps, [s.get("verdict") for s in steps])
        if axis != "all at once":
            line.knees = _marks(knee_of(snap), axis, xs, steps)
        lines.append(line)
    axes = [a for a in AXES if any(line.axis == a for line in lines)] or ["rate"]
    return KneeFigure(axes, panels_for(snaps), lines)
