"""The collector: the single writer of the HDR histograms.

It turns raw request records into histogram samples (exactly as DESIGN.md defines the
metrics), closes an interval every tick, keeps a sliding window of interval histograms for
live figures and a cumulative one for the whole run. Domain code only: no UI, no asyncio,
and every method that needs the time is given it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import weakref
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from llmtop.metrics import records
from llmtop.metrics.records import RequestRecord

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3

METRICS = (
    "ttft",
    "itl",
    "tpot",
    "e2el",
    "send_slip",
    "queue_wait",
    "ttft_from_intended",
    "e2el_from_intended",
)
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
BUCKET_NS = 1_000_000_000


def new_histogram() -> HdrHistogram:
    return _uncycle(HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES))


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

    def at(self, percentile: float) -> float:
        return {50.0: self.p50_ms, 90.0: self.p90_ms, 99.0: self.p99_ms, 99.9: self.p999_ms}[
            percentile
        ]


EMPTY = MetricSummary(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)


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


def _counts(h: HdrHistogram | CountsHistogram) -> np.ndarray:
    if isinstance(h, CountsHistogram):
        return h.array
    return np.frombuffer(h.counts, dtype=np.int64, count=h.counts_len)


def add_into(dst: HdrHistogram, src: HdrHistogram) -> None:
    """`dst.add(src)` for two histograms of our layout, as one numpy addition."""
    if not src.total_count:
        return
    _counts(dst)[:] += _counts(src)
    dst.total_count += src.total_count
    dst.min_value = min(dst.min_value, src.min_value)
    dst.max_value = max(dst.max_value, src.max_value)


def clear(h: HdrHistogram) -> None:
    """`h.reset()` without its Python loop over ~23k counters."""
    _counts(h)[:] = 0
    h.total_count = 0
    h.min_value = sys.maxsize
    h.max_value = 0


def value_at_percentile_us(h: HdrHistogram, percentile: float) -> float:
    """Same answer as `h.get_value_at_percentile(p)`, without the Python loop."""
    return _percentiles(h, [percentile])[0]


def _percentiles(h: HdrHistogram, percentiles: list[float]) -> list[float]:
    total = h.get_total_count()
    if not total:
        return [0.0 for _ in percentiles]
    lay = _layout()
    cum = np.cumsum(_counts(h))
    out = []
    for p in percentiles:
        target = max(int(min(p, 100.0) * total / 100 + 0.5), 1)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, lay.counts_len - 1)
        out.append(float(lay.highest[i] if p else lay.lowest[i]))
    return out


def mean_us(h: HdrHistogram) -> float:
    """Same answer as `h.get_mean_value()` (median-equivalent values), vectorised."""
    total = h.get_total_count()
    if not total:
        return 0.0
    # elementwise, not np.dot: a BLAS call here costs milliseconds on some OpenBLAS setups
    return float((_counts(h) * _layout().median).sum() / total)


def summarize(h: HdrHistogram) -> MetricSummary:
    n = h.get_total_count()
    if n == 0:
        return EMPTY
    p50, p90, p99, p999 = _percentiles(h, list(PERCENTILES))
    return MetricSummary(
        count=n,
        mean_ms=mean_us(h) / 1000,
        p50_ms=p50 / 1000,
        p90_ms=p90 / 1000,
        p99_ms=p99 / 1000,
        p999_ms=p999 / 1000,
        max_ms=h.get_max_value() / 1000,
    )


@dataclass
class Counts:
    """Plain counters of one interval (or of the whole run)."""

    completed: int = 0
    good: int = 0  # completed within every per-request SLO limit (goodput)
    failed: int = 0
    cancelled: int = 0
    warmup: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.completed += other.completed
        self.good += other.good
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.warmup += other.warmup
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.errors.update(other.errors)


@dataclass
class Step:
    """A stretch of the run held at one offered load (a rate step of the UI or the knee)."""

    index: int
    offered: float  # req/s (open loop) or concurrency (closed loop)
    start_ns: int
    end_ns: int | None = None
    histograms: dict[str, HdrHistogram] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    label: str = ""
    compact: dict[str, bytes] | None = None  # encoded histograms once packed away

    def histogram(self, metric: str) -> HdrHistogram:
        """One metric's histogram, live or decoded from the packed form."""
        if self.compact is None:
            return self.histograms.get(metric) or new_histogram()
        enc = self.compact.get(metric)
        return decode_histogram(enc) if enc else new_histogram()

    def all_histograms(self) -> dict[str, HdrHistogram]:
        return {m: self.histogram(m) for m in METRICS}

    def duration_s(self, now_ns: int | None = None) -> float:
        end = self.end_ns if self.end_ns is not None else now_ns
        return max(((end or self.start_ns) - self.start_ns) / 1e9, 0.0)


@dataclass(frozen=True)
class Interval:
    """One closed interval: its histograms and counters."""

    start_ns: int
    end_ns: int
    histograms: dict[str, HdrHistogram]
    counts: Counts


class Collector:
    """Fills histograms from records; closes intervals on `tick(now_ns)`."""

    def __init__(
        self, window_s: float = 10.0, request_limits_ms: dict[str, float] | None = None
    ) -> None:
        self.window_s = window_s
        self.request_limits_us = {m: v * 1000 for m, v in (request_limits_ms or {}).items()}
        self.steps: list[Step] = []
        self.late_records = 0
        self._rec_step: Step | None = None
        self._win = {m: CountsHistogram() for m in METRICS}
        self._spare = {m: new_histogram() for m in METRICS}
        self._pending: dict[tuple[int, str], list[Any]] = {}
        self._bucket: Interval | None = None
        self.cumulative = {m: new_histogram() for m in METRICS}
        self.current = {m: new_histogram() for m in METRICS}
        self.counts = Counts()
        self.current_counts = Counts()
        self.window: deque[Interval] = deque()
        self.out_of_range: Counter[str] = Counter()
        self.error_examples: dict[str, str] = {}
        self.interval_start_ns: int | None = None
        self.measure_from_ns: int | None = None
        self.first_send_ns: int | None = None
        self.last_end_ns: int | None = None

    # -- input --------------------------------------------------------------------------
    def load_started(self, t_ns: int) -> None:
        """Move step 0's start to the load loop's start (spawning it takes ~0.3 s, which
        would count as time at the first load); not once a later step has begun."""
        if len(self.steps) == 1 and self.steps[0].end_ns is None:
            self.steps[0].start_ns = max(self.steps[0].start_ns, t_ns)

    def measurement_started(self, t_ns: int) -> None:
        self.measure_from_ns = t_ns

    def add(self, recs: Iterable[RequestRecord]) -> None:
        """Take a batch of records; histogram samples are recorded in bulk with numpy.

        Recording one value at a time costs ~1 µs of Python each (twice: interval and step),
        and the parent shares a core with the load process in benchmarks: its bursts of
        work showed up as milliseconds of lateness in the child. In bulk it is ~20× cheaper.
        """
        self._pending: dict[tuple[int, str], list[Any]] = {}
        for rec in recs:
            self._add(rec)
        for (step_key, metric), parts in self._pending.items():
            step = self.steps[step_key] if step_key >= 0 else None
            if metric == "itl":
                values = np.concatenate([v for v, _ in parts])
                weights = np.concatenate([w for _, w in parts])
            else:
                values = np.asarray(parts, dtype=np.int64)
                weights = None
            values = np.maximum(values, 0) // 1000
            rejected = record_many(self.current[metric], values, weights)
            if rejected:
                self.out_of_range[metric] += rejected
            if step is not None and step.compact is None:
                record_many(step.histograms[metric], values, weights)
        self._pending = {}

    def _record(self, metric: str, value_ns: int) -> None:
        key = (self._rec_step.index if self._rec_step is not None else -1, metric)
        bucket = self._pending.get(key)
        if bucket is None:
            bucket = self._pending[key] = []
        bucket.append(value_ns)

    def _step_of(self, intended_ns: int) -> Step | None:
        """The step a request belongs to: the one running when it was scheduled to be sent."""
        for step in reversed(self.steps):
            if step.start_ns <= intended_ns:
                if step.compact is not None:
                    self.late_records += 1  # its histograms are packed away; counts only
                    return None
                return step
        return None

    def _compact_steps(self) -> None:
        """Pack the histograms of long-finished steps into their encoded form to bound memory.

        A step keeps live histograms while it runs and for the next step after it (its last
        requests are still finishing); older ones are encoded (~1 kB each) and decoded on
        demand by `Step.histogram()`.
        """
        for step in self.steps[:-2]:
            if step.compact is None:
                step.compact = {
                    m: h.encode() for m, h in step.histograms.items() if h.get_total_count()
                }
                step.histograms = {}

    def _add(self, rec: RequestRecord) -> None:
        step = self._rec_step = self._step_of(rec.intended_ns) if self.steps else None
        good = rec.error is None and rec.measured and self._within_limits(rec)
        if step is not None:  # step counters follow the request's send time too
            self._count(step.counts, rec, good)
        self._count(self.current_counts, rec, good)
        if rec.error == records.CANCELLED or not rec.measured:
            return
        self._record("send_slip", rec.send_ns - rec.intended_ns)
        self._record("queue_wait", rec.slot_ns - rec.intended_ns)
        if rec.error is not None:
            return
        self._add_latencies(rec)

    def _count(self, c: Counts, rec: RequestRecord, good: bool) -> None:
        if rec.error == records.CANCELLED:
            c.cancelled += 1
            return
        if not rec.measured:
            c.warmup += 1
            return
        if c is self.current_counts:
            if self.first_send_ns is None or rec.send_ns < self.first_send_ns:
                self.first_send_ns = rec.send_ns
            if self.last_end_ns is None or rec.end_ns > self.last_end_ns:
                self.last_end_ns = rec.end_ns
        if rec.error is not None:
            c.failed += 1
            c.errors[rec.error] += 1
            self.error_examples.setdefault(rec.error, rec.detail)
            return
        c.completed += 1
        if good:
            c.good += 1
        c.output_tokens += max(rec.output_tokens, 0)
        c.input_tokens += max(rec.prompt_tokens, 0)

    def _add_latencies(self, rec: RequestRecord) -> None:
        if not rec.first_ns:
            return
        self._record("ttft", rec.first_ns - rec.send_ns)
        self._record("ttft_from_intended", rec.first_ns - rec.intended_ns)
        self._record("e2el", rec.last_ns - rec.send_ns)
        self._record("e2el_from_intended", rec.last_ns - rec.intended_ns)
        if rec.output_tokens > 1:
            self._record("tpot", (rec.last_ns - rec.first_ns) // (rec.output_tokens - 1))
        if len(rec.chunk_ns) < 16:  # fewer than two token chunks: no gap
            return
        stamps = np.frombuffer(rec.chunk_ns, dtype=np.int64)
        tokens = np.frombuffer(rec.chunk_tokens, dtype=np.int32)[1:].astype(np.int64)
        gaps = np.diff(stamps)
        # k tokens arrived together: k samples of gap/k, never one
        key = (self._rec_step.index if self._rec_step is not None else -1, "itl")
        bucket = self._pending.get(key)
        if bucket is None:
            bucket = self._pending[key] = []
        bucket.append((gaps // np.maximum(tokens, 1), np.maximum(tokens, 1)))

    def _within_limits(self, rec: RequestRecord) -> bool:
        """Per-request SLO check for goodput (vLLM's --goodput semantics)."""
        limits = self.request_limits_us
        if not limits:
            return True
        if not rec.first_ns:
            return False
        values = {
            "ttft": (rec.first_ns - rec.send_ns) / 1000,
            "e2el": (rec.last_ns - rec.send_ns) / 1000,
            "ttft_from_intended": (rec.first_ns - rec.intended_ns) / 1000,
            "e2el_from_intended": (rec.last_ns - rec.intended_ns) / 1000,
            "send_slip": (rec.send_ns - rec.intended_ns) / 1000,
            "queue_wait": (rec.slot_ns - rec.intended_ns) / 1000,
        }
        if rec.output_tokens > 1:
            values["tpot"] = (rec.last_ns - rec.first_ns) / (rec.output_tokens - 1) / 1000
        for metric, limit in limits.items():
            if metric == "itl":
                stamps = rec.stamps()
                tokens = rec.tokens_per_chunk()
                worst = max(
                    (
                        (stamps[i] - stamps[i - 1]) / max(tokens[i], 1)
                        for i in range(1, len(stamps))
                    ),
                    default=0.0,
                )
                if worst / 1000 > limit:
                    return False
            elif values.get(metric, 0.0) > limit:
                return False
        return True

    # -- steps --------------------------------------------------------------------------
    def begin_step(self, now_ns: int, offered: float, label: str = "") -> Step:
        """Close the running step (if any) and start one at a new offered load."""
        self.end_step(now_ns)
        step = Step(len(self.steps), offered, now_ns, label=label)
        step.histograms = {m: new_histogram() for m in METRICS}
        self.steps.append(step)
        return step

    def end_step(self, now_ns: int) -> None:
        if self.steps and self.steps[-1].end_ns is None:
            self.steps[-1].end_ns = now_ns

    @property
    def current_step(self) -> Step | None:
        if self.steps and self.steps[-1].end_ns is None:
            return self.steps[-1]
        return None

    # -- intervals ----------------------------------------------------------------------
    def tick(self, now_ns: int) -> Interval:
        """Close the current interval and slide the window.

        The returned interval's histograms are valid until the next tick (they are cleared
        and reused: making eight ~190 kB histograms four times a second costs milliseconds).
        The window is a running numpy sum of one-second buckets: each tick adds the interval,
        and a bucket that leaves the window is subtracted.
        """
        start = self.interval_start_ns if self.interval_start_ns is not None else now_ns
        interval = Interval(start, now_ns, self.current, self.current_counts)
        bucket = self._bucket
        if bucket is None:
            bucket = self._bucket = Interval(start, now_ns, {}, Counts())
        for m, h in self.current.items():
            n = h.get_total_count()
            if n:
                add_into(self.cumulative[m], h)
                counts = _counts(h)
                arr = bucket.histograms.get(m)
                if arr is None:
                    bucket.histograms[m] = arr = CountsHistogram()
                arr.add_counts(counts, n)
                self._win[m].add_counts(counts, n)
        self.counts.add(self.current_counts)
        bucket.counts.add(self.current_counts)
        bucket = self._bucket = dataclasses.replace(bucket, end_ns=now_ns)
        if now_ns - bucket.start_ns >= BUCKET_NS:
            self.window.append(bucket)
            self._bucket = None
        horizon = now_ns - round(self.window_s * 1e9)
        while self.window and self.window[0].end_ns <= horizon:
            self._expire(self.window.popleft())
        spare = self._spare
        for h in spare.values():
            clear(h)
        self._spare = self.current
        self.current = spare
        self.current_counts = Counts()
        self.interval_start_ns = now_ns
        self._compact_steps()
        return interval

    def _expire(self, bucket: Interval) -> None:
        for m, arr in bucket.histograms.items():
            self._win[m].add_counts(arr.array, arr.total, sign=-1)

    def _buckets(self) -> list[Interval]:
        return [*self.window, self._bucket] if self._bucket is not None else list(self.window)

    def reset_window(self) -> None:
        self.window.clear()
        self._bucket = None
        self._win = {m: CountsHistogram() for m in METRICS}

    def window_histogram(self, metric: str) -> CountsHistogram:
        """The window's counters of one metric (a live view: read it before the next tick)."""
        return self._win[metric]

    def window_summary(self, metrics: Iterable[str] = METRICS) -> dict[str, MetricSummary]:
        return {m: summarize(self.window_histogram(m)) for m in metrics}

    def window_counts(self) -> tuple[Counts, float]:
        """Counters over the window and the window's length in seconds."""
        total = Counts()
        buckets = self._buckets()
        for iv in buckets:
            total.add(iv.counts)
        if not buckets:
            return total, 0.0
        return total, (buckets[-1].end_ns - buckets[0].start_ns) / 1e9

    # -- whole run ----------------------------------------------------------------------
    def duration_s(self) -> float:
        """From the start of measurement to the last response's end (as vllm bench does)."""
        start = self.measure_from_ns if self.measure_from_ns is not None else self.first_send_ns
        if start is None or self.last_end_ns is None:
            return 0.0
        return max((self.last_end_ns - start) / 1e9, 0.0)

    def summary(self) -> dict[str, object]:
        """The whole-run figures, in the JSON shape the issue asks for."""
        out: dict[str, object] = {}
        for m in METRICS:
            out[f"{m}_ms"] = summarize(self.cumulative[m]).as_dict()
        c = self.counts
        dur = self.duration_s()
        out.update(
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            warmup_requests=c.warmup,
            errors=dict(c.errors),
            error_examples=dict(self.error_examples),
            input_tokens=c.input_tokens,
            output_tokens=c.output_tokens,
            duration_s=dur,
            request_throughput=c.completed / dur if dur else 0.0,
            goodput=c.good / dur if dur and self.request_limits_us else None,
            good_requests=c.good if self.request_limits_us else None,
            output_throughput=c.output_tokens / dur if dur else 0.0,
            total_throughput=(c.input_tokens + c.output_tokens) / dur if dur else 0.0,
            out_of_range=dict(self.out_of_range),
        )
        return out


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


def decode_histogram(data: bytes | str) -> HdrHistogram:
    return _uncycle(HdrHistogram.decode(data))


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


def error_rate(c: Counts) -> float:
    done = c.completed + c.failed
    return c.failed / done if done else 0.0


def step_summary(
    step: Step, slo: object | None = None, now_ns: int | None = None
) -> dict[str, object]:
    """One step's figures: achieved throughput, goodput, percentiles, and the SLO verdict."""
    from llmtop.slo import Slo, histogram_value_ms

    dur = step.duration_s(now_ns)
    c = step.counts
    out: dict[str, object] = {
        "index": step.index,
        "label": step.label,
        "offered": step.offered,
        "duration_s": dur,
        "completed": c.completed,
        "failed": c.failed,
        "errors": dict(c.errors),
        "request_throughput": c.completed / dur if dur else 0.0,
        "output_throughput": c.output_tokens / dur if dur else 0.0,
        "goodput": c.good / dur if dur else 0.0,
        "error_rate": error_rate(c),
    }
    hists = step.all_histograms()
    for m in METRICS:
        out[f"{m}_ms"] = summarize(hists[m]).as_dict()
    if isinstance(slo, Slo) and slo:
        results = slo.evaluate(
            lambda metric, stat: histogram_value_ms(hists, metric, stat), error_rate(c)
        )
        out["slo"] = [{"limit": r.limit.text, "value": r.value, "ok": r.ok} for r in results]
        out["slo_ok"] = all(r.ok for r in results)
    return out
