"""Throughput line: output tokens/s, goodput against the SLO, and errors by kind."""

from __future__ import annotations

import math
from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.metrics.telemetry import Telemetry
from llmtop.slo import Slo
from llmtop.tui.model import colour_for, results_for


class ThroughputPanel(Widget):
    """Output tok/s · total tok/s · goodput (req/s within every limit) · errors."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rate--value",
        "rate--label",
        "level--green",
        "level--amber",
        "level--red",
        "level--neutral",
    }
    frame: reactive[Telemetry | None] = reactive(None)

    def __init__(self, has_slo: bool, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.has_slo = has_slo
        self.slo: Slo | None = None  # once set (the `l` key), results outside it are stale
        self._failed_seen: list[tuple[float, int]] = []  # (elapsed, failed), UI thread only

    def set_slo(self, slo: Slo) -> None:
        """Judge by this SLO from now on (the `l` key)."""
        self.slo = slo
        self.has_slo = bool(slo)
        self.refresh()

    def watch_frame(self, frame: Telemetry | None) -> None:
        if frame is not None:
            self._failed_seen.append((frame.elapsed_s, frame.failed))
            horizon = frame.elapsed_s - max(frame.window_s, 10.0)
            while len(self._failed_seen) > 2 and self._failed_seen[0][0] < horizon:
                self._failed_seen.pop(0)

    def recent_failures(self) -> int:
        """Failures over about the last window (from the frames this widget saw)."""
        if len(self._failed_seen) < 2:
            return self._failed_seen[-1][1] if self._failed_seen else 0
        return self._failed_seen[-1][1] - self._failed_seen[0][1]

    def render(self) -> Text:
        v = self.get_component_rich_style("rate--value")
        lab = self.get_component_rich_style("rate--label")
        f = self.frame
        t = Text(no_wrap=True, overflow="ellipsis")
        if f is None:
            return t
        t.append("Output ", lab)
        t.append(f"{f.output_tps:,.0f} tok/s", v)
        t.append("   Goodput ", lab)
        if not self.has_slo:
            t.append("– (no SLO)", lab)
        elif f.goodput is None:
            t.append("–", lab)
        else:
            share = f.goodput / f.request_rate if f.request_rate else math.nan
            lvl = "level--green" if math.isnan(share) or share >= 0.99 else "level--amber"
            if not math.isnan(share) and share < 0.9:
                lvl = "level--red"
            t.append(f"{f.goodput:,.2f} req/s", self.get_component_rich_style(lvl))
            if not math.isnan(share):
                t.append(f" ({share:.0%})", lab)
        t.append("   Errors ", lab)
        err_results = results_for(f.slo, "error_rate")
        if self.slo is not None:
            err_results = [r for r in err_results if r.limit in self.slo.limits]
        level = colour_for(err_results)
        recent = self.recent_failures()
        if level == "neutral":
            level = "red" if recent else "green"
        t.append(f"{f.failed:,}", self.get_component_rich_style(f"level--{level}"))
        done = f.completed + f.failed
        if done:
            t.append(f" ({f.failed / done:.1%})", lab)
        if f.errors:
            kinds = sorted(f.errors.items(), key=lambda kv: -kv[1])[:3]
            t.append("  " + ", ".join(f"{k} {n}" for k, n in kinds), lab)
        return t
