"""Figures per conversation turn: TTFT by turn is where prefix caching shows.

Fed by the collector with the measured, finished records that carry a turn number (only
conversation workloads set one), so a run without conversations pays nothing. The whole-run
histograms stay the collector's; these are extra, one small set per turn index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from llmtop.metrics.hdr import new_histogram, summarize
from llmtop.metrics.records import RequestRecord

TURN_METRICS = ("ttft", "tpot", "e2el")  # per-request latencies (ITL is per token: run-wide)


@dataclass
class TurnFigures:
    """One turn index's counters and latency histograms (µs)."""

    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cached_known: int = 0  # requests whose usage said how many prompt tokens were cached
    output_tokens: int = 0
    histograms: dict[str, HdrHistogram] = field(
        default_factory=lambda: {m: new_histogram() for m in TURN_METRICS}
    )

    def add(self, rec: RequestRecord) -> None:
        if rec.error is not None:
            self.failed += 1
            return
        self.completed += 1
        self.prompt_tokens += max(rec.prompt_tokens, 0)
        self.output_tokens += max(rec.output_tokens, 0)
        if rec.cached_tokens >= 0:
            self.cached_tokens += rec.cached_tokens
            self.cached_known += 1
        if not rec.first_ns:
            return
        h = self.histograms
        h["ttft"].record_value(max(rec.first_ns - rec.send_ns, 0) // 1000)
        h["e2el"].record_value(max(rec.last_ns - rec.send_ns, 0) // 1000)
        if rec.output_tokens > 1:
            tpot = (rec.last_ns - rec.first_ns) // (rec.output_tokens - 1)
            h["tpot"].record_value(max(tpot, 0) // 1000)

    def summary(self, cached_reported: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "completed": self.completed,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_tokens if cached_reported else None,
            "output_tokens": self.output_tokens,
        }
        for m in TURN_METRICS:
            out[f"{m}_ms"] = summarize(self.histograms[m]).as_dict()
        return out


class Turns:
    """Every turn index seen so far."""

    def __init__(self) -> None:
        self.by_turn: dict[int, TurnFigures] = {}

    def add(self, rec: RequestRecord) -> None:
        """A measured request that finished (well or not) and is not cancelled."""
        t = self.by_turn.get(rec.turn)
        if t is None:
            t = self.by_turn[rec.turn] = TurnFigures()
        t.add(rec)

    def summary(self, cached_reported: bool) -> dict[str, dict[str, Any]]:
        """`{"1": {...}, "2": {...}}`: JSON keys are strings, in turn order."""
        return {str(k): self.by_turn[k].summary(cached_reported) for k in sorted(self.by_turn)}
