"""Interval histograms instead of raw records: what a remote worker ships to the parent.

Past one machine, raw records cannot all cross to one parent (and their times are on another
machine's clock). A remote worker's *agent* (the Ray actor beside the load process, never the
load loop itself) feeds the records into its own `Collector`, exactly as the parent would,
and every ~250 ms ships what it recorded since: the run's interval histograms and counters,
and each rate step's, as sparse counter arrays (only the non-zero counters of our one HDR
layout: a few hundred bytes, added into the parent's histograms with one numpy operation).
Times travel as offsets from the worker's start barrier and land on the parent's clock.

Exact: HDR counters add, so the merged histograms are the histograms of the union of the
requests (tests/test_workers.py checks it against one collector fed every record).
"""

from __future__ import annotations

import pickle
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np
from hdrh.histogram import HdrHistogram

from llmtop.metrics import records
from llmtop.metrics.collector import Collector, Counts
from llmtop.metrics.hdr import clear, counts_of, new_histogram, record_many
from llmtop.metrics.records import RequestRecord
from llmtop.metrics.turns import TURN_METRICS, TurnFigures


@dataclass(frozen=True)
class SparseHistogram:
    """The non-zero counters of one histogram of our layout, and its total, min and max."""

    index: bytes  # int32 counter indices
    counts: bytes  # int64 counts
    total: int
    min_value: int
    max_value: int

    @classmethod
    def of(cls, h: HdrHistogram) -> SparseHistogram:
        c = counts_of(h)
        idx = np.flatnonzero(c).astype(np.int32)
        return cls(
            idx.tobytes(),
            c[idx].astype(np.int64).tobytes(),
            h.total_count,
            h.min_value,
            h.max_value,
        )

    def add_into(self, dst: HdrHistogram) -> None:
        """`dst.add(this)`: exact, one numpy fancy-index add."""
        if not self.total:
            return
        idx = np.frombuffer(self.index, dtype=np.int32)
        counts_of(dst)[idx] += np.frombuffer(self.counts, dtype=np.int64)
        dst.total_count += self.total
        dst.min_value = min(dst.min_value, self.min_value)
        dst.max_value = max(dst.max_value, self.max_value)

    def histogram(self) -> HdrHistogram:
        h = new_histogram()
        self.add_into(h)
        return h


def _sparse(hists: dict[str, HdrHistogram]) -> dict[str, SparseHistogram]:
    return {m: SparseHistogram.of(h) for m, h in hists.items() if h.get_total_count()}


# a conversation turn's counters, as TurnFigures keeps them (docs/workloads.md)
_TURN_COUNTERS = (
    "completed",
    "failed",
    "prompt_tokens",
    "cached_tokens",
    "cached_known",
    "output_tokens",
)


@dataclass(frozen=True)
class TurnShipped:
    """One turn index's figures since the last shipment: counters and sparse histograms."""

    counters: tuple[int, ...]  # in `_TURN_COUNTERS` order
    histograms: dict[str, SparseHistogram]

    @classmethod
    def drain(cls, t: TurnFigures) -> TurnShipped | None:
        """What `t` holds, then empty it (None when it holds nothing)."""
        counters = tuple(getattr(t, k) for k in _TURN_COUNTERS)
        if not any(counters):
            return None
        shipped = cls(counters, _sparse(t.histograms))
        for k in _TURN_COUNTERS:
            setattr(t, k, 0)
        for h in t.histograms.values():
            clear(h)
        return shipped

    def add_into(self, t: TurnFigures) -> None:
        for k, v in zip(_TURN_COUNTERS, self.counters, strict=True):
            setattr(t, k, getattr(t, k) + v)
        for m, h in self.histograms.items():
            if m in TURN_METRICS:
                h.add_into(t.histograms[m])


def _counts_empty(c: Counts) -> bool:
    return not (c.completed or c.failed or c.cancelled or c.warmup)


@dataclass(frozen=True)
class HistogramsShipped:
    """A remote worker's figures since its last shipment; times as offsets from its start."""

    worker: int
    histograms: dict[str, SparseHistogram]
    counts: Counts
    steps: dict[int, tuple[dict[str, SparseHistogram], Counts]]
    first_send_offset_ns: int | None
    last_end_offset_ns: int | None
    late_records: int = 0
    out_of_range: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    slip: SparseHistogram | None = None  # the worker's own send slip (send − slot), µs
    turns: dict[int, TurnShipped] = field(default_factory=dict)  # conversations' by_turn
    parent_t0_ns: int = 0  # set by the parent: its clock at the worker's start barrier

    def merge_into(self, collector: Collector) -> None:
        """Add these figures into the parent's collector (the session calls this)."""
        t0 = self.parent_t0_ns
        collector.merge(  # the sparse counters go straight into the parent's histograms
            self.histograms,
            self.counts,
            self.steps,
            None if self.first_send_offset_ns is None else t0 + self.first_send_offset_ns,
            None if self.last_end_offset_ns is None else t0 + self.last_end_offset_ns,
        )
        collector.late_records += self.late_records
        collector.out_of_range.update(self.out_of_range)
        for kind, detail in self.error_examples.items():
            collector.error_examples.setdefault(kind, detail)
        by_turn = collector.turns.by_turn
        for turn, shipped in self.turns.items():
            t = by_turn.get(turn)
            if t is None:
                t = by_turn[turn] = TurnFigures()
            shipped.add_into(t)


class DeltaCollector:
    """A worker-side `Collector` that hands out what it recorded since the last `drain`.

    The steps mirror the parent's (`begin_step` with the same index order, at the step's
    instant on this worker's clock); the run's histograms are its `current` interval. Old
    steps are packed away as in the parent (a record for one of them counts as late).
    """

    def __init__(self, window_s: float = 10.0, limits_ms: dict[str, float] | None = None) -> None:
        self.c = Collector(window_s, limits_ms)
        self.t0_ns = 0
        self._late = 0
        self._oor: dict[str, int] = {}
        self._examples: set[str] = set()
        self._slip = new_histogram()
        self.slip_total = new_histogram()

    def begin_step(self, t_ns: int, offered: float, label: str = "") -> None:
        self.c.begin_step(t_ns, offered, label)

    def add(self, recs: list[RequestRecord]) -> None:
        self.c.add(recs)
        slips = [
            r.send_ns - r.slot_ns
            for r in recs
            if r.measured and r.send_ns and r.error != records.CANCELLED
        ]
        if slips:
            values = np.maximum(np.asarray(slips, dtype=np.int64), 0) // 1000
            record_many(self._slip, values)
            record_many(self.slip_total, values)

    def drain(self, worker: int) -> HistogramsShipped | None:
        """What was recorded since the last drain (None when nothing was)."""
        c = self.c
        if _counts_empty(c.current_counts) and not any(
            h.get_total_count() for h in c.current.values()
        ):
            return None
        run = _sparse(c.current)
        run_counts = c.current_counts
        for h in c.current.values():
            clear(h)
        c.current_counts = Counts()
        steps: dict[int, tuple[dict[str, SparseHistogram], Counts]] = {}
        for step in c.steps:
            if step.compact is not None or _counts_empty(step.counts):
                continue
            steps[step.index] = (_sparse(step.histograms), step.counts)
            for h in step.histograms.values():
                clear(h)
            step.counts = Counts()
        first = None if c.first_send_ns is None else c.first_send_ns - self.t0_ns
        last = None if c.last_end_ns is None else c.last_end_ns - self.t0_ns
        late, self._late = c.late_records - self._late, c.late_records
        oor = {m: n - self._oor.get(m, 0) for m, n in c.out_of_range.items()}
        self._oor = dict(c.out_of_range)
        examples = {k: v for k, v in c.error_examples.items() if k not in self._examples}
        self._examples.update(examples)
        slip = SparseHistogram.of(self._slip) if self._slip.get_total_count() else None
        clear(self._slip)
        turns = {}
        for turn, figures in c.turns.by_turn.items():
            shipped = TurnShipped.drain(figures)
            if shipped is not None:
                turns[turn] = shipped
        for step in c.steps[:-2]:  # packed away as the parent's are at its next tick:
            if step.compact is None:  # a later record of theirs counts as late, as there
                step.compact = {}
                step.histograms = {}
        return HistogramsShipped(
            worker,
            run,
            run_counts,
            steps,
            first,
            last,
            late,
            {m: n for m, n in oor.items() if n},
            examples,
            slip,
            turns,
        )


# -- raw records, when the parent needs every request (`--save-requests` over Ray) -------------
_TIMES = ("intended_ns", "slot_ns", "send_ns", "first_ns", "last_ns", "end_ns")
_TIMES_IF_SET = ("reasoning_first_ns", "answer_first_ns")


def pack_records(recs: list[RequestRecord]) -> bytes:
    """A batch of records as they cross the network: pickled, then zlib level 1 (~3× smaller
    at a few µs a record: the chunk stamps are close int64s)."""
    return zlib.compress(pickle.dumps(recs, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack_records(blob: bytes, shift_ns: int) -> list[RequestRecord]:
    """`pack_records` undone, every time moved by `shift_ns` (a worker's clock → this one's;
    a time of 0 means "none" and stays 0)."""
    recs: list[RequestRecord] = pickle.loads(zlib.decompress(blob))
    if not shift_ns:
        return recs
    out = []
    for r in recs:
        changes: dict[str, object] = {k: getattr(r, k) + shift_ns for k in _TIMES if getattr(r, k)}
        changes.update({k: getattr(r, k) + shift_ns for k in _TIMES_IF_SET if getattr(r, k)})
        if r.chunk_ns:
            changes["chunk_ns"] = (np.frombuffer(r.chunk_ns, dtype=np.int64) + shift_ns).tobytes()
        out.append(r._replace(**changes))
    return out


def sizeof_shipment(msg: HistogramsShipped) -> int:
    """Bytes of the arrays in a shipment (for the docs' bandwidth figures)."""
    n = sum(len(s.index) + len(s.counts) for s in msg.histograms.values())
    for hists, _ in msg.steps.values():
        n += sum(len(s.index) + len(s.counts) for s in hists.values())
    return n + sys.getsizeof(msg)
