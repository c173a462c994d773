"""The HDR histogram engine: one fixed layout and numpy-speed statistics over it.

Every latency histogram in llmtop has the same layout (1 µs to 1 h, 3 significant figures),
so the value of each counter index can be computed once and every statistic becomes a numpy
reduction. Each function here gives the same answer as HdrHistogram_py's own method (the
tests check them against the library), only without its Python loops over ~23k counters.
Values are microseconds; `stat_ms` and `MetricSummary` report milliseconds.
"""

from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _uncycle(h: HdrHistogram) -> HdrHistogram:
    """Break HdrHistogram_py's histogram ↔ encoder reference cycle.

    With the cycle, a dropped histogram (and its ~190 kB of counters, which the garbage
    collector does not count) waits for a rare full collection: the parent grew by ~70 MB a
    minute. With a weak back-reference it is freed the moment it is dropped.
    """
    enc = h.encoder
    if not isinstance(enc.histogram, weakref.ProxyType):
        enc.histogram = weakref.proxy(h)
    return h


def new_histogram() -> HdrHistogram:
    return _uncycle(HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES))


def decode_histogram(data: bytes | str) -> HdrHistogram:
    """The standard compressed base64 encoding ("HISTFAAA...") back to a histogram.

    A `str` must be ASCII (a `UnicodeEncodeError`, a `ValueError`, otherwise); the
    histogram it gives back has no reference cycle, like `new_histogram()`'s.
    """
    raw = data.encode("ascii") if isinstance(data, str) else data
    return _uncycle(HdrHistogram.decode(raw))


def encode_histogram(h: HdrHistogram) -> str | None:
    """Standard compressed base64 ("HISTFAAA..."); None for an empty histogram."""
    return h.encode().decode("ascii") if h.get_total_count() else None


class _Layout:
    """Per-index values of our one histogram layout, for numpy-speed statistics.

    HdrHistogram_py's `get_mean_value` walks every recorded value in Python (~1 ms or more),
    and its percentile scan is a Python loop over ~23k counters. With the layout's values
    precomputed, a cumulative sum and a search give the same answers (checked against the
    library in tests) in a few tens of microseconds.
    """

    def __init__(self) -> None:
        h = new_histogram()
        self.counts_len = n = h.counts_len
        assert h.word_size == 8, "counts are read as int64"
        um = h.unit_magnitude
        half_mag = h.sub_bucket_half_count_magnitude
        half = h.sub_bucket_half_count
        mask = h.sub_bucket_mask
        lowest = np.empty(n, dtype=np.float64)
        size = np.empty(n, dtype=np.float64)
        for i in range(n):  # the library's index → value arithmetic, inlined (~25 ms once)
            b = (i >> half_mag) - 1
            sub = (i & (half - 1)) + half
            if b < 0:
                sub -= half
                b = 0
            v = sub << (b + um)
            vb = (v | mask).bit_length() - um - (half_mag + 1)
            if (v >> (vb + um)) >= h.sub_bucket_count:
                vb += 1
            lowest[i] = v
            size[i] = 1 << (um + vb)
        self.lowest = lowest
        self.highest = lowest + size - 1
        self.median = lowest + np.floor(size / 2)


_LAYOUT: _Layout | None = None


def _layout() -> _Layout:
    global _LAYOUT
    if _LAYOUT is None:
        _LAYOUT = _Layout()
    return _LAYOUT


class CountsHistogram:
    """Counters of our one layout as a numpy array: the sliding window's running sum.

    It answers what the statistics below ask of a histogram (total, max, counts), so the
    window needs no merge of HdrHistograms per tick: intervals are added to it and expired
    seconds subtracted from it, each a ~10 µs array operation.
    """

    def __init__(self) -> None:
        self.array = np.zeros(_layout().counts_len, dtype=np.int64)
        self.total = 0

    def get_total_count(self) -> int:
        return self.total

    def get_max_value(self) -> float:
        if not self.total:
            return 0
        nz = np.flatnonzero(self.array)
        return float(_layout().highest[nz[-1]])

    def add_counts(self, counts: np.ndarray, total: int, sign: int = 1) -> None:
        if sign > 0:
            self.array += counts
        else:
            self.array -= counts
        self.total += sign * total


# What every statistic below reads: a recorded histogram or the window's running sum.
Histogram = HdrHistogram | CountsHistogram


def counts_of(h: Histogram) -> np.ndarray:
    """The counters of a histogram of our layout as an int64 array (a view, not a copy)."""
    if isinstance(h, CountsHistogram):
        return h.array
    return np.frombuffer(h.counts, dtype=np.int64, count=h.counts_len)


def record_many(h: HdrHistogram, values: np.ndarray, weights: np.ndarray | None = None) -> int:
    """`h.record_value` for many values at once (same buckets); returns how many were rejected.

    Mirrors HdrHistogram_py's index arithmetic (`_counts_index_for`) vectorised; the test
    suite checks it gives the same counts, total, min and max as recording one by one.
    """
    if values.size == 0:
        return 0
    v = values.astype(np.int64, copy=False)
    w = np.ones_like(v) if weights is None else weights.astype(np.int64, copy=False)
    um = h.unit_magnitude
    half_mag = h.sub_bucket_half_count_magnitude
    _, exp = np.frexp((v | h.sub_bucket_mask).astype(np.float64))  # bit_length, exactly
    bucket = exp.astype(np.int64) - um - (half_mag + 1)
    sub = v >> (bucket + um)
    idx = ((bucket + 1) << half_mag) + (sub - h.sub_bucket_half_count)
    ok = (v >= 0) & (idx >= 0) & (idx < h.counts_len)
    rejected = int(w[~ok].sum())
    if rejected:
        v, w, idx = v[ok], w[ok], idx[ok]
        if v.size == 0:
            return rejected
    counts = np.frombuffer(h.counts, dtype=np.int64, count=h.counts_len)
    np.add.at(counts, idx, w)
    h.total_count += int(w.sum())
    h.min_value = min(h.min_value, int(v.min()))
    h.max_value = max(h.max_value, int(v.max()))
    return rejected


def add_into(dst: HdrHistogram, src: HdrHistogram) -> None:
    """`dst.add(src)` for two histograms of our layout, as one numpy addition."""
    if not src.total_count:
        return
    counts_of(dst)[:] += counts_of(src)
    dst.total_count += src.total_count
    dst.min_value = min(dst.min_value, src.min_value)
    dst.max_value = max(dst.max_value, src.max_value)


def clear(h: HdrHistogram) -> None:
    """`h.reset()` without its Python loop over ~23k counters."""
    counts_of(h)[:] = 0
    h.total_count = 0
    h.min_value = sys.maxsize
    h.max_value = 0


def percentiles_us(h: Histogram, percentiles: list[float]) -> list[float]:
    """`h.get_value_at_percentile(p)` for each p, from one cumulative sum."""
    total = h.get_total_count()
    if not total:
        return [0.0 for _ in percentiles]
    lay = _layout()
    cum = np.cumsum(counts_of(h))
    out = []
    for p in percentiles:
        target = max(int(min(p, 100.0) * total / 100 + 0.5), 1)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, lay.counts_len - 1)
        out.append(float(lay.highest[i] if p else lay.lowest[i]))
    return out


def value_at_percentile_us(h: Histogram, percentile: float) -> float:
    """Same answer as `h.get_value_at_percentile(p)`, without the Python loop."""
    return percentiles_us(h, [percentile])[0]


def mean_us(h: Histogram) -> float:
    """Same answer as `h.get_mean_value()` (median-equivalent values), vectorised."""
    total = h.get_total_count()
    if not total:
        return 0.0
    # elementwise, not np.dot: a BLAS call here costs milliseconds on some OpenBLAS setups
    return float((counts_of(h) * _layout().median).sum() / total)


def stddev_us(h: Histogram) -> float:
    """Same answer as `h.get_stddev()` (to rounding): median-equivalent values, vectorised."""
    total = h.get_total_count()
    if not total:
        return 0.0
    dev = _layout().median - mean_us(h)
    return math.sqrt(float((counts_of(h) * dev * dev).sum()) / total)


def count_above_us(h: Histogram, threshold_us: float) -> int:
    """Samples whose value is above the threshold as percentiles see it (the highest value
    of their bucket): what iterating `h.get_recorded_iterator()` would count."""
    counts = counts_of(h)
    return int(counts[_layout().highest > threshold_us].sum())


def stat_ms(h: Histogram | None, stat: str) -> float:
    """One statistic of a histogram in ms: "mean", "max" or a percentile "p99", "p99.9"...;
    NaN when the histogram holds nothing (nothing measured breaks no limit)."""
    if h is None or not h.get_total_count():
        return math.nan
    if stat == "mean":
        return mean_us(h) / 1000
    if stat == "max":
        return h.get_max_value() / 1000
    return value_at_percentile_us(h, float(stat[1:])) / 1000


@dataclass(frozen=True)
class MetricSummary:
    """Percentiles of one metric, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "p50": self.p50_ms,
            "p90": self.p90_ms,
            "p99": self.p99_ms,
            "p99.9": self.p999_ms,
            "mean": self.mean_ms,
            "max": self.max_ms,
            "count": self.count,
        }


EMPTY = MetricSummary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)


def summarize(h: Histogram) -> MetricSummary:
    n = h.get_total_count()
    if n == 0:
        return EMPTY
    p50, p90, p99, p999 = percentiles_us(h, list(PERCENTILES))
    return MetricSummary(
        count=n,
        mean_ms=mean_us(h) / 1000,
        p50_ms=p50 / 1000,
        p90_ms=p90 / 1000,
        p99_ms=p99 / 1000,
        p999_ms=p999 / 1000,
        max_ms=h.get_max_value() / 1000,
    )
