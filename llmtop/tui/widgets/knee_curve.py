"""The latency–throughput curve: one point per rate step held, so the knee shows as it forms.

x is the throughput each step achieved (completed req/s), y its p99 TTFT (top) and TPOT
(bottom), with the SLO line; a point is green when the step met the SLO, red when it broke it.
"""

from __future__ import annotations

import math
from typing import ClassVar

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.slo import Slo
from llmtop.tui.canvas import LABEL_W, Canvas, labelled, nice_max, to_dot
from llmtop.tui.model import StepPoint, format_ms, format_rate, held_steps


class KneeCurve(Widget):
    """p99 latency against achieved throughput, one point per held rate step."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "chart--label",
        "chart--slo",
        "chart--link",
        "level--green",
        "level--red",
        "level--neutral",
    }
    steps: reactive[tuple[StepPoint, ...]] = reactive(())

    def __init__(self, slo: Slo, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.slo = slo
        self.border_title = "p99 vs achieved req/s, per step"

    def points(self) -> list[StepPoint]:
        """Held steps, in the order of their offered load (the curve's order)."""
        return sorted(held_steps(self.steps), key=lambda p: (p.offered, p.index))

    def render(self) -> Group:
        width = max(self.content_size.width - LABEL_W, 4)
        height = max(self.content_size.height, 3)
        lab = str(self.get_component_rich_style("chart--label"))
        pts = self.points()
        if not pts:
            msg = "hold a rate a few seconds: each step becomes a point here"
            return Group(Text(msg, lab, no_wrap=True, overflow="ellipsis"))
        plot_rows = height - 1
        ttft_rows = (plot_rows + 1) // 2
        tpot_rows = plot_rows - ttft_rows
        x_top = nice_max(max(p.achieved_rps for p in pts) * 1.1)
        rows = self._series("ttft", "TTFT", pts, x_top, width, ttft_rows, lab)
        if tpot_rows:
            rows += self._series("tpot", "TPOT", pts, x_top, width, tpot_rows, lab)
        right = f"{format_rate(x_top)} req/s"
        rows.append(Text(" " * LABEL_W + "0" + right.rjust(width - 1), lab))
        return Group(*rows)

    def _series(
        self,
        metric: str,
        name: str,
        pts: list[StepPoint],
        x_top: float,
        width: int,
        height: int,
        lab: str,
    ) -> list[Text]:
        limit = self.slo.limit_for(metric)
        ys = [p.latency(metric) for p in pts]
        finite = [y for y in ys if not math.isnan(y)]
        top = nice_max(max(max(finite, default=0.0), limit.threshold * 1.25 if limit else 0.0))
        c = Canvas(width, height)
        if limit is not None:
            slo_style = str(self.get_component_rich_style("chart--slo"))
            c.hline(to_dot(limit.threshold, top, c.dots_y), "╌", slo_style)
        link = str(self.get_component_rich_style("chart--link"))
        prev: tuple[int, int] | None = None
        marks = []
        for p, y in zip(pts, ys, strict=True):
            if math.isnan(y):
                continue
            xd = to_dot(p.achieved_rps, x_top, c.dots_x)
            yd = to_dot(y, top, c.dots_y)
            if prev is not None:
                c.line(prev[0], prev[1], xd, yd, link)
            prev = (xd, yd)
            level = "neutral" if p.slo_ok is None else ("green" if p.slo_ok else "red")
            marks.append((xd, yd, str(self.get_component_rich_style(f"level--{level}"))))
        for xd, yd, style in marks:
            c.mark(xd // 2, c.height - 1 - yd // 4, "●", style)
        return labelled(c.rows(), format_ms(top), name, lab)
