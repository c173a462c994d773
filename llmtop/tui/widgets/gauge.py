"""A latency gauge: p50 and p99 over the sliding window, with the SLO mark, coloured by it."""

from __future__ import annotations

import math
from typing import ClassVar

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.metrics.telemetry import Telemetry
from llmtop.slo import Slo
from llmtop.tui.canvas import nice_max
from llmtop.tui.model import NEUTRAL, colour_for, format_ms, results_for

_OPS = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}
SLO_SPAN = 1.5  # with an SLO the bar spans 1.5 × the limit, so the mark sits at two thirds


class LatencyGauge(Widget):
    """p50 (solid) and p99 (shaded) as one bar; `│` marks the SLO limit."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "level--green",
        "level--amber",
        "level--red",
        "level--neutral",
        "gauge--p50",
        "gauge--track",
        "gauge--mark",
        "gauge--label",
    }
    frame: reactive[Telemetry | None] = reactive(None)

    def __init__(self, metric: str, label: str, definition: str, slo: Slo, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.metric = metric
        self.border_title = label
        self.tooltip = f"{label}: {definition}"
        self._top = 0.0  # the bar's scale without an SLO: only grows, so bars don't jump
        self.level = NEUTRAL
        self.set_slo(slo)

    def set_slo(self, slo: Slo) -> None:
        """Judge by this SLO from now on (the `l` key): its mark, subtitle and colour."""
        self.slo = slo
        self.limit = lim = slo.limit_for(self.metric)
        self.border_subtitle = (
            f"{lim.stat}{_OPS.get(lim.op, lim.op)}{format_ms(lim.threshold)}" if lim else ""
        )
        self.watch_frame(self.frame)
        self.refresh()

    def watch_frame(self, frame: Telemetry | None) -> None:
        if frame is None:
            return
        # only the SLO in force: a frame judged before the `l` key changed it says nothing
        results = [r for r in results_for(frame.slo, self.metric) if r.limit in self.slo.limits]
        self.level = colour_for(results)
        for lvl in ("green", "amber", "red", "neutral"):
            self.set_class(self.level == lvl, f"-{lvl}")

    def render(self) -> Group:
        lab = self.get_component_rich_style("gauge--label")
        level = self.get_component_rich_style(f"level--{self.level}")
        f = self.frame
        s = f.window.get(self.metric) if f is not None else None
        p50 = s.p50_ms if s else math.nan
        p99 = s.p99_ms if s else math.nan
        width = max(self.content_size.width, 8)
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("p99 ", lab)
        text.append(format_ms(p99), level)
        if width >= 19:
            text.append("  p50 ", lab)
            text.append(format_ms(p50))
        return Group(text, self._bar(p50, p99, width))

    def _bar(self, p50: float, p99: float, width: int) -> Text:
        if self.limit is not None:
            top = self.limit.threshold * SLO_SPAN
        else:
            if not math.isnan(p99):
                self._top = max(self._top, nice_max(p99 * 1.25))
            top = self._top or 1.0

        def cells(v: float) -> int:
            return 0 if math.isnan(v) else min(round(v / top * width), width)

        n50, n99 = cells(p50), cells(p99)
        mark = cells(self.limit.threshold) if self.limit is not None else -1
        level = self.get_component_rich_style(f"level--{self.level}")
        solid = self.get_component_rich_style("gauge--p50") + level
        track = self.get_component_rich_style("gauge--track")
        mark_style = self.get_component_rich_style("gauge--mark")
        bar = Text(no_wrap=True)
        for i in range(width):
            if i == mark or (i == width - 1 and mark == width):
                bar.append("│", mark_style)
            elif i < n50:
                bar.append("█", solid)
            elif i < n99:
                bar.append("▓", level)
            else:
                bar.append("·", track)
        if not math.isnan(p99) and p99 > top:
            bar = bar[: width - 1]
            bar.append("▶", level)
        return bar
