"""The per-worker lines of the final table, and the guard's verdict in one line.

A run split over workers (`--workers`, `--ray`) says, per worker, where it ran, what it
completed, how busy and how late it was, and which were lost mid-run (docs/scale.md).
"""

from __future__ import annotations

from typing import Any

from llmtop.metrics.telemetry import Telemetry


def _f(v: Any, unit: str = "", digits: int = 2) -> str:
    return "-" if not isinstance(v, int | float) else f"{v:.{digits}f}{unit}"


def worker_lines(summary: dict[str, Any]) -> list[str]:
    """`workers` lines of the table: one per worker when there are several (or one was lost)."""
    workers = summary.get("workers") or []
    lost = summary.get("workers_lost") or []
    if len(workers) < 2 and not lost:
        return []
    ray = summary.get("ray") or {}
    where = f"Ray at {ray.get('address')}, {ray.get('placement')}" if ray else "this host"
    nodes = len({w.get("node") for w in workers})
    out = [f"workers     {len(workers)} on {nodes} node{'s' if nodes != 1 else ''} ({where})"]
    for w in workers:
        slip = (w.get("send_slip_ms") or {}).get("p99")
        lag = (w.get("loop_lag_ms") or {}).get("p99")
        node = str(w.get("node", ""))
        node = node[:12] if ray else node
        line = (
            f"  #{w['id']:<3} {node:<12} done {w.get('completed', 0):>7}  failed "
            f"{w.get('failed', 0):>5}  CPU {_f(w.get('cpu_pct'), ' %', 0):>5}  "
            f"send slip p99 {_f(slip, ' ms')}  loop lag p99 {_f(lag, ' ms')}"
        )
        if w.get("lost"):
            line += f"  LOST at {_f(w.get('lost_at_s'), ' s', 1)} ({w.get('lost_reason', '')})"
        out.append(line)
    for ev in lost:
        to = ", ".join(f"#{i}" for i in ev.get("respread_to") or []) or "nobody"
        out.append(
            f"  worker #{ev['id']} lost at {_f(ev.get('at_s'), ' s', 1)}: its share went to {to}"
            f" from {_f(ev.get('respread_at_s'), ' s', 1)}; {ev.get('in_flight_lost', 0)} "
            "requests it had sent were lost with it"
        )
    return out


def client_bound_part(t: Telemetry) -> str | None:
    """The progress line's warning when the guard says the client is the bottleneck."""
    if not t.client_bound:
        return None
    return t.client_bound.replace("the CLIENT is the bottleneck, not the server", "CLIENT-BOUND")
