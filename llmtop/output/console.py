"""Headless output: a live progress line on stderr and the final summary table."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from llmtop.errors import LlmtopError, redact
from llmtop.metrics.catalog import METRICS, rows
from llmtop.metrics.telemetry import Telemetry
from llmtop.output.jsonfile import dumps, write_json_atomic
from llmtop.output.observe import observe_lines
from llmtop.output.repeats import repeat_lines
from llmtop.output.workers import client_bound_part, worker_lines
from llmtop.output.workloads import cache_lines, turn_lines

# (summary key, label, definition) of each row of the final table, from the metric catalog
TABLE_METRICS = tuple((f"{m.name}_ms", m.label, m.definition) for m in rows(METRICS))


def _ms(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.2f}" if v < 1000 else f"{v:,.0f}"


def progress_line(t: Telemetry) -> str:
    w = t.window
    rate = "all at once" if math.isinf(t.offered_rate) else f"{t.offered_rate:g}/s"
    parts = [
        f"[{t.elapsed_s:6.1f}s] {t.phase:<9}",
        f"rate {rate}",
        f"sent {t.sent}",
        f"in flight {t.in_flight}",
        f"done {t.completed}",
        f"failed {t.failed}",
        f"TTFT p99 {_ms(w['ttft'].p99_ms)} ms",
        f"TPOT p99 {_ms(w['tpot'].p99_ms)} ms",
        f"{t.output_tps:,.0f} tok/s",
    ]
    if t.queued:  # the client's own cap holds these back, not the server
        parts.insert(4, f"client-bound: {t.queued} waiting for a --max-concurrency slot")
    bound = client_bound_part(t)  # the workers' guard (docs/scale.md)
    if bound:
        parts.append(bound)
    return "  ".join(parts)


def client_bottleneck(summary: dict[str, Any]) -> dict[str, Any] | None:
    """When the client, not the server, set the pace: its own `--max-concurrency` cap, or the
    workers' guard (a saturated or delayed load process, docs/scale.md).

    The cap is named first when both hold: it is what the flags asked for, and the one the
    user can lift; the guard's verdict rides along under `also` and in the message.
    """
    saturated = summary.get("client_saturation")  # the workers' guard (docs/scale.md)
    cap = _cap_bottleneck(summary)
    if cap is not None and saturated:
        cap["also"] = saturated
        cap["message"] += f"; also {saturated.get('message', '')}"
    return cap or saturated or None


def _cap_bottleneck(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The `--max-concurrency` cap as the bottleneck: requests that wait for a slot are sent
    late, so the throughput is what the cap allows and a `--duration` schedule takes longer
    to send. The sign is the wait for a slot: its p99 above 10 ms and 5 % of the median E2E
    (below that a wait is noise)."""
    plan = (summary.get("config") or {}).get("plan") or {}
    cap = plan.get("max_concurrency")
    wait = summary.get("queue_wait_ms") or {}
    p99 = wait.get("p99")
    if not cap or not wait.get("count") or not isinstance(p99, int | float):
        return None
    e2e = (summary.get("e2el_ms") or {}).get("p50")
    floor = max(10.0, 0.05 * e2e) if isinstance(e2e, int | float) else 10.0
    if not p99 > floor:
        return None
    message = (
        f"the client's --max-concurrency {cap} was the bottleneck, not the server: requests "
        f"waited for a slot (p99 {_ms(p99)} ms, max {_ms(wait.get('max'))} ms), so the "
        f"throughput is what {cap} in flight allow"
    )
    scheduled = plan.get("duration_s")
    took = summary.get("duration_s")
    nums = isinstance(scheduled, int | float) and isinstance(took, int | float)
    if nums and took > scheduled * 1.05:
        message += f"; the {scheduled:g} s schedule took {took:.1f} s to send"
    return {
        "where": "client",
        "cause": "max_concurrency",
        "max_concurrency": cap,
        "queue_wait_p99_ms": p99,
        "queue_wait_max_ms": wait.get("max"),
        "message": message,
    }


def _workload_line(summary: dict[str, Any]) -> str:
    """Lengths or dataset, prompt format, and the profile: what the figures are figures of."""
    w = summary.get("workload") or (summary.get("config") or {}).get("workload") or {}
    text = str(w.get("text") or "")
    profile = summary.get("profile")
    if isinstance(profile, dict) and profile.get("name"):
        text += f"   profile {profile['name']}"
    return text


class ProgressLine:
    """The live line on stderr: redrawn at most once a second, erased at the end."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = 0.0

    def show(self, frame: Telemetry | None) -> None:
        if frame is None or not self.enabled or time.monotonic() - self._last < 1.0:
            return
        self._last = time.monotonic()
        sys.stderr.write("\r\x1b[2K" + progress_line(frame))
        sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    """The end-of-run table, every metric labelled with what it measures."""
    summary = redact(summary)  # server-given strings (error examples, model, notes) included
    target = summary.get("target", {})
    sim = target.get("sim")
    where = target.get("url", "")
    if sim:
        gpus = f"{sim.get('tp')} × {sim.get('gpu')}" if (sim.get("tp") or 1) > 1 else sim.get("gpu")
        where += f"  (simulated: {sim.get('engine')} {sim.get('model')} on {gpus})"
    engine = summary.get("engine") or {}
    lines = [
        "",
        f"target      {where}",
        f"model       {target.get('model', '')}"
        + (f"   engine {engine.get('name')} {engine.get('version', '')}" if engine else ""),
        f"workload    {_workload_line(summary)}",
        f"load        {summary.get('load', '')}",
        f"duration    {summary['duration_s']:.2f} s   completed {summary['completed']}"
        f"   failed {summary['failed']}"
        + (f"   cancelled {summary['cancelled']}" if summary.get("cancelled") else ""),
        f"throughput  {summary['request_throughput']:.2f} req/s   "
        f"{summary['output_throughput']:,.1f} output tok/s   "
        f"{summary['total_throughput']:,.1f} total tok/s",
        f"tokens      {summary['input_tokens']:,} in   {summary['output_tokens']:,} out",
        *cache_lines(summary),
    ]
    bottleneck = summary.get("bottleneck", client_bottleneck(summary))
    if bottleneck:
        lines.append(f"bottleneck  {bottleneck['message']}")
    lines.extend(worker_lines(summary))
    if summary.get("goodput") is not None:
        lines.append(
            f"goodput     {summary['goodput']:.2f} req/s within every per-request limit"
            f" ({summary.get('good_requests', 0)} of {summary['completed']} requests)"
        )
    slo = summary.get("slo")
    if slo:
        verdict = "MET" if slo["ok"] else "BROKEN"
        parts = []
        for r in slo["limits"]:
            v = r["value"]
            shown = (
                "-"
                if v is None
                else (f"{v * 100:.2f}%" if "error_rate" in r["limit"] else f"{_ms(v)} ms")
            )
            parts.append(f"{r['limit']} {'ok' if r['ok'] else 'FAIL'} ({shown})")
        lines.append(f"slo         {verdict}: " + ", ".join(parts))
    if summary.get("errors"):
        errs = ", ".join(f"{k} {v}" for k, v in sorted(summary["errors"].items()))
        lines.append(f"errors      {errs}")
        for kind, detail in sorted(summary.get("error_examples", {}).items()):
            if detail:
                lines.append(f"            {kind}: {detail}")
    lines.append("")
    head = (
        f"{'metric (ms)':<11}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'mean':>10}{'max':>10}"
    )
    lines.append(head + "   definition")
    for key, label, definition in TABLE_METRICS:
        m = summary.get(key)
        if not m or not m.get("count"):
            continue
        cells = "".join(f"{_ms(m[p]):>10}" for p in ("p50", "p90", "p99", "p99.9", "mean", "max"))
        lines.append(f"{label:<11}{cells}   {definition}")
    lines.append("(* from the intended send time: includes any client-side delay)")
    lines.extend(turn_lines(summary))
    lines.extend(observe_lines(summary))  # the server's own latency split, GPU energy
    lines.extend(repeat_lines(summary))  # run --repeat N: across runs and pooled
    if summary.get("notes"):
        lines.extend(f"note: {n}" for n in summary["notes"])
    stamps = summary.get("receive_stamps") or {}
    if stamps.get("user") and not stamps.get("kernel"):
        lines.append(
            "note: token times are the event loop's stamps (not Linux, or "
            "LLMTOP_RX_STAMPS=user), not the kernel's: under heavy load they run late"
        )
    out.write("\n".join(lines) + "\n")


def write_json_output(path: str | Path, data: Any) -> None:
    """`--json PATH`, atomically; `--json -` to stdout. A failure is one line."""
    if str(path) == "-":
        sys.stdout.write(dumps(data) + "\n")
        sys.stdout.flush()
        return
    try:
        write_json_atomic(path, data)
    except OSError as exc:
        raise LlmtopError(f"cannot write --json {path}: {exc.strerror or exc}") from None
