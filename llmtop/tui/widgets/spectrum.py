"""The percentile spectrum, live: latency against percentile, HdrHistogram's classic plot.

The x axis is 1 / (1 − percentile) on a log scale (p0 … p90, p99, p99.9, p99.99), so the
tail gets the room it needs; one panel each for TTFT, ITL and E2E, the client's curve and
the server's side by side. The client's points are the window's p50, p90, p99, p99.9 and
its max (drawn at p99.99); the server's come from its own histograms over its window,
interpolated linearly within buckets (`engines.server_latency`), so they step where the
buckets are wide. A line above says the server's TTFT split: queue + prefill.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.metrics.telemetry import Telemetry
from llmtop.tui.canvas import Canvas, nice_max, to_dot
from llmtop.tui.model import format_ms

PANELS = (("ttft", "TTFT"), ("itl", "ITL"), ("e2el", "E2E"))
X_DECADES = 4.0  # p99.99 = 10^4 on the 1/(1-q) axis
TICKS = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("99.99", 0.9999))


def x_of(q: float) -> float:
    """A quantile's place on [0, 1] of the axis: log10(1 / (1 − q)) / 4, clamped."""
    if q >= 0.9999:
        return 1.0
    return min(max(math.log10(1.0 / (1.0 - q)) / X_DECADES, 0.0), 1.0)


def client_points(frame: Telemetry, metric: str) -> list[tuple[float, float]]:
    """(quantile, ms) of the client's window figures for one metric; [] when empty."""
    m = frame.window.get(metric)
    if m is None or not m.count:
        return []
    pts = [(0.5, m.p50_ms), (0.9, m.p90_ms), (0.99, m.p99_ms), (0.999, m.p999_ms)]
    pts.append((0.9999, m.max_ms))
    return [(q, v) for q, v in pts if isinstance(v, int | float) and not math.isnan(v)]


def server_points(server: Mapping[str, Any] | None, metric: str) -> list[tuple[float, float]]:
    lat = (server or {}).get("server_latency") or {}
    pts = (lat.get("spectrum") or {}).get(metric) or []
    return [(float(q), float(v)) for q, v in pts if isinstance(v, int | float) and v == v]


def split_line(frame: Telemetry) -> str:
    """'TTFT p50 client 12ms · server 11ms = queue 1ms + prefill 10ms' (what is known)."""
    m = frame.window.get("ttft")
    client = format_ms(m.p50_ms) if m is not None and m.count else "–"
    lat = ((frame.server or {}).get("server_latency")) or {}

    def p50(key: str) -> str:
        v = (lat.get(f"{key}_ms") or {}).get("p50")
        return format_ms(v) if isinstance(v, int | float) else "–"

    text = f"TTFT p50  client {client}  ·  server {p50('ttft')}"
    if lat.get("queue_ms") or lat.get("prefill_ms"):
        text += f" = queue {p50('queue')} + prefill {p50('prefill')}"
    if not lat:
        text += " (the server exports no latency histograms)"
    return text


class SpectrumPanel(Widget):
    """Latency vs percentile for TTFT, ITL and E2E: client and server, over the window."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "spectrum--client",
        "spectrum--server",
        "spectrum--label",
    }
    frame: reactive[Telemetry | None] = reactive(None, always_update=True)

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.border_title = "percentile spectrum (p key): client ⠿ vs server ⠶"
        self.border_subtitle = "server: its buckets, interpolated"

    def render(self) -> Group:
        lab = self.get_component_rich_style("spectrum--label")
        cs = str(self.get_component_rich_style("spectrum--client"))
        ss = str(self.get_component_rich_style("spectrum--server"))
        f = self.frame
        width = max(self.content_size.width, 30)
        height = max(self.content_size.height, 5)
        if f is None:
            return Group(Text("waiting for the first frame…", lab))
        rows: list[Text] = [Text(split_line(f), lab, no_wrap=True, overflow="ellipsis")]
        panel_w = max((width - 2) // 3, 8)
        plot_h = max(height - 3, 1)
        panels = [self._panel(f, m, name, panel_w, plot_h, cs, ss, lab) for m, name in PANELS]
        for i in range(len(panels[0])):
            line = Text()
            for j, p in enumerate(panels):
                if j:
                    line.append(" ")
                line.append_text(p[i])
            rows.append(line)
        return Group(*rows)

    def _panel(
        self,
        f: Telemetry,
        metric: str,
        name: str,
        width: int,
        height: int,
        cs: str,
        ss: str,
        lab: Any,
    ) -> list[Text]:
        client = client_points(f, metric)
        server = server_points(f.server, metric)
        top = nice_max(max([v for _, v in client + server], default=0.0))
        c = Canvas(width, height)
        _draw(c, server, top, ss)
        _draw(c, client, top, cs)
        title = Text(f"{name} ", lab, no_wrap=True)
        title.append(f"0–{format_ms(top)}", lab)
        title.truncate(width, pad=True)
        axis = Text(no_wrap=True)
        axis_cells = [" "] * width
        for label, q in TICKS:
            col = min(round(x_of(q) * (width - 1)), width - 1)
            start = max(min(col - len(label) + 1, width - len(label)), 0)
            if q < 0.9999:
                start = min(col, width - len(label))
            if all(ch == " " for ch in axis_cells[start : start + len(label)]):
                axis_cells[start : start + len(label)] = list(label)
        axis.append("".join(axis_cells), lab)
        return [title, *c.rows(), axis]


def _draw(c: Canvas, pts: Sequence[tuple[float, float]], top: float, style: str) -> None:
    prev: tuple[int, int] | None = None
    for q, v in sorted(pts):
        x = round(x_of(q) * (c.dots_x - 1))
        y = to_dot(v, top, c.dots_y)
        if y < 0:
            continue
        if prev is not None:
            c.line(prev[0], prev[1], x, y, style)
        else:
            c.dot(x, y, style)
        prev = (x, y)
