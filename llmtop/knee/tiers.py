"""One SLO tier's state in the knee search: its bracket, candidate and confirmation."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtop.knee.model import KneeStep


@dataclass
class TierState:
    index: int
    name: str | None
    limits: tuple[int, ...]  # () = every limit
    good: list[float] = field(default_factory=list)
    bad: list[float] = field(default_factory=list)
    resolved: str | None = None  # why no more search steps are needed (floor, unattainable)
    unattainable: bool = False
    candidate: float | None = None  # the value being (or to be) confirmed
    confirmed: float | None = None
    confirm_step: KneeStep | None = None
    confirm_failures: int = 0
    gave_up: str | None = None  # why the confirmation stopped without a sustained knee
    confirming: bool = False  # past the bisection: only confirmations from here on

    def bracket(self) -> tuple[float | None, float | None]:
        lo = max(self.good) if self.good else None
        above = [b for b in self.bad if lo is None or b > lo]
        return lo, (min(above) if above else None)

    def interested(self, value: float) -> bool:
        lo, hi = self.bracket()
        return (lo is None or value > lo) and (hi is None or value < hi)

    def record(self, value: float, verdict: str) -> None:
        if verdict == "good":
            self.good.append(value)
            self.bad = [b for b in self.bad if b != value]
        elif verdict == "bad":
            self.bad.append(value)
            self.good = [g for g in self.good if g != value]
