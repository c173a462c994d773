"""The server's own figures from its metrics series: latency percentiles and GPU energy.

Pure arithmetic over the samples the metrics poller took (`engines.poller`), here below the
session so that `LoadSession.summary()` can put them beside the client's figures.

Latency: an engine exports Prometheus histograms (cumulative counts per `le` bound, in
seconds). The requests finished between two scrapes are the difference of the two scrapes'
counts; a percentile is found in the bucket where the cumulative count crosses it and
**linearly interpolated within that bucket** (as Prometheus' `histogram_quantile` does), so
it is only as exact as the bucket is narrow: each figure carries the bucket its p50 fell
in. When every request of the interval fell in one bucket, the histogram's own mean
(`_sum` / `_count`) narrows the stretch interpolated over (see `quantile_s`). A percentile
that falls in the open `+Inf` bucket is reported as the last finite bound.

GPU: each sample may carry `"gpu"` (see `engines.gpu`): per-GPU and total utilisation,
power, memory and, where the source has it, the energy counter. Energy over the measured
span comes from the counter where every GPU has one, otherwise from integrating the total
power (trapezoids) over the same span.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

# The server_latency keys, in the order they show, and a short label for each.
LATENCY_KEYS = ("ttft", "queue", "prefill", "decode", "e2el", "itl")
LATENCY_LABELS = {
    "ttft": "TTFT",
    "queue": "queue",
    "prefill": "prefill",
    "decode": "decode",
    "e2el": "E2E",
    "itl": "ITL",
}
METHOD = "linear interpolation within the server's Prometheus buckets"
SPECTRUM_QUANTILES = (0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999)

Hist = Mapping[str, Any]  # {"source": name, "le": [bounds s], "cum": [cumulative counts], "sum"}


def bucket_counts(now: Hist, before: Hist | None) -> list[float] | None:
    """Per-bucket counts (not cumulative, +Inf last) of what finished between two scrapes.

    None when the two do not line up (other bounds) or a count fell (the server restarted).
    """
    cum = list(now["cum"])
    if before is not None:
        if list(before["le"]) != list(now["le"]) or len(before["cum"]) != len(cum):
            return None
        cum = [a - b for a, b in zip(cum, before["cum"], strict=True)]
        if any(c < 0 for c in cum):
            return None
    out = []
    prev = 0.0
    for c in cum:
        out.append(max(c - prev, 0.0))
        prev = c
    return out


def quantile_s(
    le: Sequence[float], counts: Sequence[float], q: float, mean_s: float | None = None
) -> tuple[float, float, float]:
    """(value, bucket low, bucket high) in seconds of quantile `q` (0..1); NaNs when empty.

    `le` are the finite bounds; `counts` has one more entry, the +Inf bucket. When every
    value fell in one finite bucket, `mean_s` (the histogram's sum / count) is that bucket's
    own mean, and the interpolation runs over the narrowest stretch of it a uniform spread
    with that mean fits in (vLLM's first queue bucket is 0-300 ms: a 4 ms mean must not
    read as a 150 ms median).
    """
    total = sum(counts)
    if total <= 0:
        return math.nan, math.nan, math.nan
    occupied = [i for i, c in enumerate(counts) if c > 0]
    if mean_s is not None and len(occupied) == 1 and occupied[0] < len(le):
        i = occupied[0]
        lo, hi = (le[i - 1] if i > 0 else 0.0), le[i]
        if lo <= mean_s <= hi:
            a, b = lo, hi
            if mean_s - lo <= hi - mean_s:
                b = lo + 2 * (mean_s - lo)
            else:
                a = hi - 2 * (hi - mean_s)
            return a + (b - a) * min(max(q, 0.0), 1.0), lo, hi
    rank = q * total
    cum = 0.0
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        if cum + c >= rank:
            lo = le[i - 1] if i > 0 else 0.0
            if i >= len(le):  # the +Inf bucket: nothing to interpolate towards
                return lo, lo, math.inf
            hi = le[i]
            frac = (rank - cum) / c
            return lo + (hi - lo) * min(max(frac, 0.0), 1.0), lo, hi
        cum += c
    last = le[-1] if le else math.nan
    return last, last, math.inf


def latency_figures(now: Hist, before: Hist | None) -> dict[str, Any] | None:
    """p50/p90/p99/mean/count in ms of what finished between two scrapes (None: no data)."""
    counts = bucket_counts(now, before)
    if counts is None:
        return None
    le = list(now["le"])
    total = sum(counts)
    mean_s = _mean_s(now, before, total)
    out: dict[str, Any] = {"source": now.get("source")}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        v, lo, hi = quantile_s(le, counts, q, mean_s)
        out[name] = v * 1e3
        if name == "p50":
            out["p50_bucket_ms"] = [lo * 1e3, hi * 1e3]
    out["mean"] = mean_s * 1e3 if mean_s is not None else math.nan
    out["count"] = round(total)
    return out


def _mean_s(now: Hist, before: Hist | None, total: float) -> float | None:
    """sum / count over the interval (None when the server gave no `_sum`)."""
    s_now = now.get("sum")
    s_before = before.get("sum") if before is not None else 0.0
    if total and isinstance(s_now, int | float) and isinstance(s_before, int | float):
        return (s_now - s_before) / total
    return None


def spectrum_ms(
    now: Hist, before: Hist | None, quantiles: Sequence[float] = SPECTRUM_QUANTILES
) -> list[tuple[float, float]]:
    """(quantile, latency ms) pairs for the percentile-spectrum plot; [] when empty."""
    counts = bucket_counts(now, before)
    if not counts or sum(counts) <= 0:
        return []
    le = list(now["le"])
    mean_s = _mean_s(now, before, sum(counts))
    return [(q, quantile_s(le, counts, q, mean_s)[0] * 1e3) for q in quantiles]


def _with_histograms(series: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [s for s in series if isinstance(s.get("histograms"), Mapping) and s["histograms"]]


def _baseline(samples: list[Mapping[str, Any]], start_ns: int | None) -> Mapping[str, Any] | None:
    """The last scrape taken before `start_ns` (the run's baseline); else the first one."""
    if not samples:
        return None
    if start_ns is None:
        return samples[0]
    before = [s for s in samples if s.get("t_ns", 0) <= start_ns]
    return before[-1] if before else samples[0]


def run_histograms(
    series: Sequence[Mapping[str, Any]], start_ns: int | None = None
) -> dict[str, tuple[Hist, Hist | None]]:
    """Per latency key: (last scrape, baseline scrape) of the server's histograms for a run.

    The baseline is the last scrape before the load started (so the counts are the run's own
    requests); with a single scrape, everything it counted.
    """
    samples = _with_histograms(series)
    if not samples:
        return {}
    base = _baseline(samples, start_ns)
    last = samples[-1]
    out: dict[str, tuple[Hist, Hist | None]] = {}
    for key in LATENCY_KEYS:
        now = last["histograms"].get(key)
        if now is None:
            continue
        before = None if base is last else base["histograms"].get(key)
        out[key] = (now, before)
    return out


def server_latency(
    series: Sequence[Mapping[str, Any]], start_ns: int | None = None
) -> dict[str, Any] | None:
    """The run's `"server_latency"`: {"ttft_ms": {...}, ..., "itl_ms": {...}}, None when the
    server exported no latency histograms. A key the engine does not export is None."""
    pairs = run_histograms(series, start_ns)
    if not pairs:
        return None
    out: dict[str, Any] = {}
    for key in LATENCY_KEYS:
        pair = pairs.get(key)
        out[f"{key}_ms"] = latency_figures(*pair) if pair else None
    return out


# -- GPU ----------------------------------------------------------------------------------


def _gpu_samples(series: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    return [
        (int(s["t_ns"]), s["gpu"]["total"])
        for s in series
        if isinstance(s.get("gpu"), Mapping) and isinstance(s["gpu"].get("total"), Mapping)
    ]


def _at(points: list[tuple[int, float]], t_ns: int, extend: bool = False) -> float | None:
    """A value linearly interpolated at t_ns; past either end held flat (a gauge), or with
    `extend` carried on along the nearest segment's slope (a counter that keeps counting)."""
    if not points:
        return None
    ts = [t for t, _ in points]
    i = bisect_left(ts, t_ns)
    if len(points) < 2 or (not extend and (i == 0 or i >= len(points))):
        return points[0][1] if i == 0 else points[-1][1]
    i = min(max(i, 1), len(points) - 1)
    (t0, v0), (t1, v1) = points[i - 1], points[i]
    return v0 if t1 == t0 else v0 + (v1 - v0) * (t_ns - t0) / (t1 - t0)


def _integral(points: list[tuple[int, float]], start_ns: int, end_ns: int) -> float:
    """∫ value dt (value × seconds) over [start, end] by trapezoids, interpolated ends."""
    if end_ns <= start_ns or not points:
        return 0.0
    inner = [(t, v) for t, v in points if start_ns < t < end_ns]
    pts = [(start_ns, _at(points, start_ns)), *inner, (end_ns, _at(points, end_ns))]
    total = 0.0
    for (t0, v0), (t1, v1) in itertools.pairwise(pts):
        total += (v0 + v1) / 2 * (t1 - t0) / 1e9  # type: ignore[operator]
    return total


def gpu_summary(
    series: Sequence[Mapping[str, Any]],
    start_ns: int | None,
    end_ns: int | None,
    output_tokens: int,
) -> dict[str, Any] | None:
    """The run's `"gpu"` figures over [start_ns, end_ns] (the measured span); None without
    GPU samples. Means are time-weighted over the span."""
    samples = _gpu_samples(series)
    if not samples:
        return None
    if start_ns is None or end_ns is None or end_ns <= start_ns:
        start_ns, end_ns = samples[0][0], samples[-1][0]
    span_s = (end_ns - start_ns) / 1e9

    def points(field: str) -> list[tuple[int, float]]:
        return [(t, float(g[field])) for t, g in samples if _finite(g.get(field))]

    def mean(field: str) -> float:
        pts = points(field)
        if not pts:
            return math.nan
        if span_s <= 0:
            return sum(v for _, v in pts) / len(pts)
        return _integral(pts, start_ns, end_ns) / span_s

    inside = [g for t, g in samples if start_ns <= t <= end_ns] or [g for _, g in samples]
    mem = [float(g["memory_used_mib"]) for g in inside if _finite(g.get("memory_used_mib"))]
    energy_pts = points("energy_j")
    energy_source = "counter"
    if energy_pts and len(energy_pts) == len(samples) and len(energy_pts) >= 2:
        e0, e1 = _at(energy_pts, start_ns, True), _at(energy_pts, end_ns, True)
        energy = (e1 - e0) if e0 is not None and e1 is not None and e1 >= e0 else math.nan
    else:
        energy = math.nan
    if not math.isfinite(energy):
        power = points("power_w")
        energy = _integral(power, start_ns, end_ns) if power else math.nan
        energy_source = "integrated power"
    gpus = max((int(g.get("gpus", 0) or 0) for _, g in samples), default=0)
    return {
        "gpus": gpus,
        "util_pct_mean": mean("util_pct"),
        "sm_active_mean": mean("sm_active"),
        "power_w_mean": mean("power_w"),
        "memory_used_mib_max": max(mem) if mem else math.nan,
        "energy_j": energy,
        "energy_source": energy_source,
        "energy_j_per_output_token": energy / output_tokens if output_tokens else math.nan,
        "duration_s": span_s,
        "source": _source(series),
    }


def _source(series: Sequence[Mapping[str, Any]]) -> str | None:
    for s in series:
        g = s.get("gpu")
        if isinstance(g, Mapping) and g.get("source"):
            return str(g["source"])
    return None


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
