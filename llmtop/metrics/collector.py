"""The collector: the single writer of the HDR histograms, and the run's domain model.

It turns raw request records into histogram samples (exactly as DESIGN.md defines the
metrics), closes an interval every tick, keeps a sliding window of interval histograms for
live figures, a cumulative one for the whole run, and one set per rate step. Domain code
only: no UI, no asyncio, and every method that needs the time is given it. The figures read
from all this (percentiles, throughputs, SLO verdicts) are computed in `figures`; the
histogram engine is `hdr`, the metric list `catalog`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from llmtop.metrics import records
from llmtop.metrics.catalog import METRICS
from llmtop.metrics.hdr import (
    CountsHistogram,
    MetricSummary,
    add_into,
    clear,
    counts_of,
    decode_histogram,
    new_histogram,
    record_many,
    summarize,
)
from llmtop.metrics.records import RequestRecord
from llmtop.metrics.turns import Turns

BUCKET_NS = 1_000_000_000


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
    cached_tokens: int = 0  # prompt tokens the server's prefix cache held (usage)
    cached_known: int = 0  # completed requests whose usage said so (0 cached included)
    reasoning_tokens: int = 0  # of output_tokens, those that were reasoning
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.completed += other.completed
        self.good += other.good
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.warmup += other.warmup
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cached_known += other.cached_known
        self.reasoning_tokens += other.reasoning_tokens
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
        self.set_request_limits_ms(request_limits_ms or {})
        self.steps: list[Step] = []
        # records of a step already packed away: in the run's figures, not in their step's
        # (the summary reports them as `late_records`)
        self.late_records = 0
        # TTFT recorded at the first token from the load process's in-flight stamps (the
        # request's record then skips it), and the latest stamps, for requests still waiting
        self._early_ttft: set[tuple[int, int, int]] = set()
        self.in_flight_table = np.empty((0, 3), dtype=np.int64)  # (intended, send, first)
        self.in_flight_t_ns = 0
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
        self.turns = Turns()  # per conversation turn (records with a turn number only)
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

    def set_request_limits_ms(self, limits_ms: dict[str, float]) -> None:
        """The per-request SLO limits goodput counts by (a new SLO mid-run: the UI's `l`)."""
        self.request_limits_us = {m: v * 1000 for m, v in limits_ms.items()}

    def add(self, recs: Iterable[RequestRecord]) -> None:
        """Take a batch of records; histogram samples are recorded in bulk with numpy.

        Recording one value at a time costs ~1 µs of Python each (twice: interval and step),
        and the parent shares a core with the load process in benchmarks: its bursts of
        work showed up as milliseconds of lateness in the child. In bulk it is ~20× cheaper.
        """
        self._pending: dict[tuple[int, str], list[Any]] = {}
        for rec in recs:
            self._add(rec)
        self._flush_pending()

    def in_flight_reported(self, t_ns: int, stamps: bytes) -> None:
        """The load process's requests still in flight: record the TTFT of those whose first
        token came since the last report (once), and keep the table for waits past a limit.

        Why: a request reaches the collector when it ends, so with long outputs TTFT would
        show seconds late and a knee step would be judged on "0 done".
        """
        table = np.frombuffer(stamps, dtype=np.int64).reshape(-1, 3) if stamps else None
        self.in_flight_table = table if table is not None else np.empty((0, 3), np.int64)
        self.in_flight_t_ns = t_ns
        if table is None:
            return
        firsts = table[table[:, 2] != 0]
        if not len(firsts):
            return
        self._pending = {}
        for intended, send, first in firsts.tolist():
            key = (intended, send, first)
            if key in self._early_ttft:
                continue
            self._early_ttft.add(key)
            self._rec_step = self._step_of(intended) if self.steps else None
            self._record("ttft", first - send)
            self._record("ttft_from_intended", first - intended)
        self._flush_pending()

    def _flush_pending(self) -> None:
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
                    self.late_records += 1  # packed away: in the run's figures, not its step's
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
        early = False
        if self._early_ttft:
            key = (rec.intended_ns, rec.send_ns, rec.first_ns)
            early = key in self._early_ttft
            self._early_ttft.discard(key)
        step = self._rec_step = self._step_of(rec.intended_ns) if self.steps else None
        good = rec.error is None and rec.measured and self._within_limits(rec)
        if step is not None:  # step counters follow the request's send time too
            self._count(step.counts, rec, good)
        self._count(self.current_counts, rec, good)
        if rec.error == records.CANCELLED or not rec.measured:
            return
        if rec.turn:
            self.turns.add(rec)
        self._record("send_slip", rec.send_ns - rec.intended_ns)
        self._record("queue_wait", rec.slot_ns - rec.intended_ns)
        if rec.error is not None:
            return
        self._add_latencies(rec, early)

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
        if rec.cached_tokens >= 0:
            c.cached_tokens += rec.cached_tokens
            c.cached_known += 1
        c.reasoning_tokens += rec.reasoning_tokens

    def _add_latencies(self, rec: RequestRecord, early: bool = False) -> None:
        if not rec.first_ns:
            return
        if not early:  # else recorded at its first token (`in_flight_reported`)
            self._record("ttft", rec.first_ns - rec.send_ns)
            self._record("ttft_from_intended", rec.first_ns - rec.intended_ns)
        if rec.reasoning_first_ns:  # a reasoning model's stream (llmtop.backends.richstream)
            self._record("ttft_reasoning", rec.reasoning_first_ns - rec.send_ns)
            if rec.answer_first_ns:
                self._record("ttft_answer", rec.answer_first_ns - rec.send_ns)
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
                counts = counts_of(h)
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

    # -- merging another collector's figures (remote workers, docs/scale.md) ------------
    def merge(
        self,
        histograms: dict[str, Any],
        counts: Counts,
        steps: dict[int, tuple[dict[str, Any], Counts]],
        first_send_ns: int | None = None,
        last_end_ns: int | None = None,
    ) -> None:
        """Take what another collector recorded since it last shipped (a remote worker's
        interval, on this collector's clock): the run's part into the current interval, each
        step's into its step, exactly as `add` would have put those records. HDR counters
        add exactly, so the merged figures are the figures of the union of the requests.
        A histogram is an HdrHistogram of our layout or anything with `add_into(dst)` (the
        sparse counters remote workers ship: no full histogram is made for them)."""

        def add(dst: HdrHistogram, src: Any) -> None:
            if isinstance(src, HdrHistogram):
                add_into(dst, src)
            else:
                src.add_into(dst)

        for m, h in histograms.items():
            if m in self.current:
                add(self.current[m], h)
        self.current_counts.add(counts)
        for index, (hists, step_counts) in steps.items():
            step = self.steps[index] if 0 <= index < len(self.steps) else None
            if step is None or step.compact is not None:  # packed away: the run's figures only
                self.late_records += step_counts.completed + step_counts.failed
                continue
            for m, h in hists.items():
                if m in step.histograms:
                    add(step.histograms[m], h)
            step.counts.add(step_counts)
        if first_send_ns is not None and (
            self.first_send_ns is None or first_send_ns < self.first_send_ns
        ):
            self.first_send_ns = first_send_ns
        if last_end_ns is not None and (self.last_end_ns is None or last_end_ns > self.last_end_ns):
            self.last_end_ns = last_end_ns

    # -- whole run ----------------------------------------------------------------------
    def duration_s(self) -> float:
        """From the start of measurement to the last response's end (as vllm bench does)."""
        start = self.measure_from_ns if self.measure_from_ns is not None else self.first_send_ns
        if start is None or self.last_end_ns is None:
            return 0.0
        return max((self.last_end_ns - start) / 1e9, 0.0)
