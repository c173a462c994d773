"""The server's own view in text: its latency split beside the client's, GPU power and energy.

Shared by the end-of-run table (`console.print_summary`) and `compare` / `report`, so the
figures read the same everywhere. The server's percentiles come from its Prometheus
histograms, linearly interpolated within buckets (`metrics.serverside`): each line says the
bucket its p50 fell in, since that is how exact it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llmtop.metrics.serverside import LATENCY_KEYS, LATENCY_LABELS

# the client's figure each server figure is set beside
CLIENT_OF = {"ttft": "ttft_ms", "e2el": "e2el_ms", "itl": "itl_ms"}


def _num(v: Any, fmt: str = ",.2f") -> str:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return "-"
    if fmt == ",.2f" and abs(v) >= 1000:
        fmt = ",.0f"
    return format(v, fmt)


def server_latency_lines(summary: Mapping[str, Any]) -> list[str]:
    """The server's TTFT split (queue + prefill), decode, E2E and ITL, client p50 beside."""
    sl = summary.get("server_latency")
    if not isinstance(sl, Mapping):
        return []
    lines = [
        "",
        f"{'server (ms)':<11}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}{'count':>8}"
        f"{'client p50':>12}   p50 bucket",
    ]
    for key in LATENCY_KEYS:
        m = sl.get(f"{key}_ms")
        if not isinstance(m, Mapping) or not m.get("count"):
            continue
        label = LATENCY_LABELS[key] if key in CLIENT_OF else f"  {LATENCY_LABELS[key]}"
        client = summary.get(CLIENT_OF.get(key, ""), {}) or {}
        lo, hi = (m.get("p50_bucket_ms") or [math.nan, math.nan])[:2]
        cells = "".join(f"{_num(m.get(p)):>10}" for p in ("p50", "p90", "p99", "mean"))
        lines.append(
            f"{label:<11}{cells}{m.get('count', 0):>8}{_num(client.get('p50')):>12}"
            f"   {_num(lo, 'g')}-{_num(hi, 'g')}"
        )
    lines.append(
        "(the server's own histograms, between the scrapes around the run; percentiles "
        "interpolated linearly within its buckets)"
    )
    return lines


def gpu_line(gpu: Mapping[str, Any] | None) -> str | None:
    """One line: GPUs, mean utilisation and power, peak memory, energy and J per token."""
    if not isinstance(gpu, Mapping):
        return None
    return (
        f"gpu         {gpu.get('gpus', 0)} GPU(s) ({gpu.get('source')}): util "
        f"{_num(gpu.get('util_pct_mean'), '.1f')} %   power {_num(gpu.get('power_w_mean'), ',.0f')}"
        f" W   memory {_num(gpu.get('memory_used_mib_max'), ',.0f')} MiB max   energy "
        f"{_num(gpu.get('energy_j'), ',.0f')} J ({gpu.get('energy_source')})   "
        f"{_num(gpu.get('energy_j_per_output_token'), '.3f')} J/output token"
    )


def observe_lines(summary: Mapping[str, Any]) -> list[str]:
    """Everything this module shows for one run summary (empty when the server said nothing)."""
    out = server_latency_lines(summary)
    g = gpu_line(summary.get("gpu"))
    if g:
        out += ["", g]
    return out


def per_gpu(snap: Mapping[str, Any]) -> tuple[float, float]:
    """(output tokens/s per GPU, joules per output token) of a snapshot (or a `--json`
    summary); NaN where unknown. GPUs: those the telemetry saw, else the simulator's TP."""
    summary = snap.get("summary") if isinstance(snap.get("summary"), Mapping) else snap
    gpu = summary.get("gpu") if isinstance(summary.get("gpu"), Mapping) else None
    sim = (snap.get("target") or {}).get("sim") or (snap.get("target") or {}).get("simulated")
    n = (gpu or {}).get("gpus") or (sim or {}).get("tp")
    tps = summary.get("output_throughput")
    per = tps / n if isinstance(tps, int | float) and n else math.nan
    jpt = (gpu or {}).get("energy_j_per_output_token")
    return per, jpt if isinstance(jpt, int | float) else math.nan
