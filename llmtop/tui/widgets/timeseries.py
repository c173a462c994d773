"""Time series of p99 TTFT and TPOT with their SLO lines, and the offered rate under them.

Drawn with braille dots (llmtop.tui.canvas), one dot column per second of the run: the
window percentiles of the latest frame in each second. The points live in this widget and
are touched by the UI thread only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.metrics.telemetry import Telemetry
from llmtop.slo import Slo
from llmtop.tui.canvas import LABEL_W, Canvas, labelled, nice_max, plot_line, sparkline, to_dot
from llmtop.tui.model import format_ms, format_rate

KEEP_S = 1200


@dataclass(frozen=True)
class _Point:
    second: int
    ttft: float
    tpot: float
    offered: float
    achieved: float


class LatencyChart(Widget):
    """p99 TTFT and TPOT over time (SLO line dashed), offered rate as a sparkline below."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "chart--ttft",
        "chart--tpot",
        "chart--slo",
        "chart--rate",
        "chart--label",
    }
    frame: reactive[Telemetry | None] = reactive(None, always_update=True)

    def __init__(self, slo: Slo, closed_loop: bool = False, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.slo = slo
        self.load_unit = "concurrency" if closed_loop else "offered req/s"
        self.border_title = "p99 latency over time"
        self.points: deque[_Point] = deque(maxlen=KEEP_S)

    def watch_frame(self, frame: Telemetry | None) -> None:
        if frame is None:
            return
        w = frame.window
        p = _Point(
            int(frame.elapsed_s),
            w["ttft"].p99_ms if "ttft" in w else math.nan,
            w["tpot"].p99_ms if "tpot" in w else math.nan,
            frame.offered_rate,
            frame.request_rate,
        )
        if self.points and self.points[-1].second == p.second:
            self.points[-1] = p  # the latest frame of each second stands for it
        else:
            self.points.append(p)

    def render(self) -> Group:
        width = max(self.content_size.width - LABEL_W, 4)
        height = max(self.content_size.height, 3)
        axis = height >= 6
        plot_rows = height - 1 - (1 if axis else 0)
        ttft_rows = (plot_rows + 1) // 2
        tpot_rows = plot_rows - ttft_rows
        pts = list(self.points)[-width * 2 :]
        lab = str(self.get_component_rich_style("chart--label"))
        rows: list[Text] = []
        rows += self._series("ttft", "TTFT", [p.ttft for p in pts], width, ttft_rows, lab)
        if tpot_rows:
            rows += self._series("tpot", "TPOT", [p.tpot for p in pts], width, tpot_rows, lab)
        offered = [p.offered for p in pts]
        finite = [o for o in offered if not math.isinf(o)]
        top = max(finite, default=0.0) or 1.0
        spark = sparkline([max(offered[i : i + 2]) for i in range(0, len(offered), 2)], top)
        now = format_rate(offered[-1]) if offered else "–"
        rate = Text(f"{now:>{LABEL_W - 1}} ", lab)
        rate.append(spark, self.get_component_rich_style("chart--rate"))
        rows.append(rate)
        if axis:
            span = f"← {len(pts)}s"
            rows.append(Text(" " * LABEL_W + span + self.load_unit.rjust(width - len(span)), lab))
        return Group(*rows)

    def _series(
        self, metric: str, name: str, ys: list[float], width: int, height: int, lab: str
    ) -> list[Text]:
        limit = self.slo.limit_for(metric)
        finite = [y for y in ys if not math.isnan(y)]
        top = nice_max(max(max(finite, default=0.0), limit.threshold * 1.25 if limit else 0.0))
        c = Canvas(width, height)
        if limit is not None:
            c.hline(
                to_dot(limit.threshold, top, c.dots_y),
                "╌",
                str(self.get_component_rich_style("chart--slo")),
            )
        plot_line(c, ys, top, str(self.get_component_rich_style(f"chart--{metric}")))
        return labelled(c.rows(), format_ms(top), name, lab)
