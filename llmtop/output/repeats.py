"""The table lines of `run --repeat N` (the JSON's `"repeats"`, llmtop.metrics.repeats)."""

from __future__ import annotations

import math
from typing import Any


def _num(v: Any, unit: str) -> str:
    """A figure as the table shows it: ms and rates to 2 decimals, a fraction as %."""
    if not isinstance(v, int | float) or math.isnan(v):
        return "-"
    if unit == "fraction":
        return f"{v * 100:.2f}%"
    return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"


def _ci(pair: Any, unit: str) -> str:
    lo, hi = pair if isinstance(pair, list | tuple) and len(pair) == 2 else (None, None)
    if lo is None and hi is None:
        return "-"
    return f"[{_num(lo, unit)}, {_num(hi, unit)}]"


def repeat_lines(summary: dict[str, Any]) -> list[str]:
    """Each headline figure across the runs (mean, Student-t 95 % CI, min, max) and pooled
    over every request (with its order-statistic 95 % CI); one line per run. Nothing when
    the run was not repeated."""
    block = summary.get("repeats")
    if not isinstance(block, dict):
        return []
    runs = block.get("runs") or []
    n, requested = block.get("n", 0), block.get("requested", len(runs))
    lines = [
        "",
        f"repeats     {len(runs)} of {requested} runs of the same schedule; the figures above "
        f"pool all of them; across the {n} complete runs:",
    ]
    head = f"{'figure':<16}{'mean':>10}{'95% CI (runs)':>22}{'min':>10}{'max':>10}"
    lines.append(head + f"{'pooled':>10}{'95% CI (pooled)':>22}")
    for f in (block.get("figures") or {}).values():
        unit = f.get("unit", "")
        values = [
            v for v in f.get("values", []) if isinstance(v, int | float) and not math.isnan(v)
        ]
        label = f"{f.get('label', '')}" + (" (ms)" if unit == "ms" else "")
        lines.append(
            f"{label:<16}{_num(f.get('mean'), unit):>10}{_ci(f.get('ci95'), unit):>22}"
            f"{_num(min(values) if values else None, unit):>10}"
            f"{_num(max(values) if values else None, unit):>10}"
            f"{_num(f.get('pooled'), unit):>10}{_ci(f.get('pooled_ci95'), unit):>22}"
        )
    said: list[str] = []
    for r in runs:
        figs = r.get("figures") or {}
        state = "" if r.get("complete") else "   (partial: not in the across-run figures)"
        lines.append(
            f"run {r.get('run')}:  {r.get('completed', 0)} done, {r.get('failed', 0)} failed in "
            f"{_num(r.get('duration_s'), 's')} s   TTFT p99 {_num(figs.get('ttft_p99'), 'ms')} ms"
            f"   {_num(figs.get('request_throughput'), 'req/s')} req/s{state}"
        )
        notes = list(r.get("notes") or [])
        if notes != said:  # the same drain and reset notes before every run: said once
            lines.extend(f"        note: {note}" for note in notes)
            said = notes
    if n < 2:
        lines.append("(a confidence interval across runs needs at least 2 complete runs)")
    lines.append(
        "(95% CI (runs): Student t over the runs' figures; 95% CI (pooled): order statistics "
        "of all requests' HDR data, for percentiles)"
    )
    return lines
