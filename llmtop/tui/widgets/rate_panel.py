"""Rate control: what the operator asked, what the load process offers and achieves, and
whether the client itself is the bottleneck (slot wait, send slip)."""

from __future__ import annotations

import math
from typing import ClassVar

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.metrics.telemetry import Telemetry
from llmtop.tui.model import format_ms, format_rate

SLIP_AMBER_MS = 5.0  # send slip p99 above this: the client is late sending (Poisson bursts: ~1 ms)
SLIP_RED_MS = 25.0


class RatePanel(Widget):
    """Offered (asked) · achieved · in flight · client queue wait p99 · send slip p99."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rate--value",
        "rate--label",
        "level--green",
        "level--amber",
        "level--red",
        "rate--paused",
    }
    frame: reactive[Telemetry | None] = reactive(None)
    asked: reactive[float] = reactive(math.nan)

    def __init__(self, closed_loop: bool, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.closed_loop = closed_loop
        self._prev: Telemetry | None = None  # for the load process's CPU % (UI thread only)
        self._cpu_pct = math.nan

    def watch_frame(self, old: Telemetry | None, new: Telemetry | None) -> None:
        if old is not None and new is not None and new.elapsed_s > old.elapsed_s:
            self._cpu_pct = (
                100 * (new.load_cpu_s - old.load_cpu_s) / (new.elapsed_s - old.elapsed_s)
            )

    def render(self) -> Group:
        v = self.get_component_rich_style("rate--value")
        lab = self.get_component_rich_style("rate--label")
        f = self.frame
        unit = "in flight" if self.closed_loop else "req/s"
        what = "Concurrency" if self.closed_loop else "Offered"
        offered = format_rate(f.offered_rate) if f else "–"
        asked = "" if math.isnan(self.asked) else format_rate(self.asked)
        line1 = Text.assemble(
            (f"{what} ", lab),
            (f"{offered} {unit}", v),
            (f" (asked {asked})" if asked and asked != offered else "", lab),
            ("   Achieved ", lab),
            (f"{format_rate(f.request_rate) if f else '–'} req/s", v),
            ("   In flight ", lab),
            (f"{f.in_flight if f else '–'}", v),
            ("   Sent ", lab),
            (f"{f.sent:,}" if f else "–", v),
            no_wrap=True,
            overflow="ellipsis",
        )
        if f is not None and f.paused:
            line1.append("   PAUSED", self.get_component_rich_style("rate--paused"))
        line2 = Text(no_wrap=True, overflow="ellipsis")
        if f is not None:
            slip = f.window["send_slip"].p99_ms if "send_slip" in f.window else math.nan
            wait = f.window["queue_wait"].p99_ms if "queue_wait" in f.window else math.nan
            level = "level--green"
            if not math.isnan(slip) and slip >= SLIP_RED_MS:
                level = "level--red"
            elif (not math.isnan(slip) and slip >= SLIP_AMBER_MS) or f.queued:
                level = "level--amber"
            ls = self.get_component_rich_style(level)
            line2.append("Client  queue wait p99 ", lab)
            line2.append(format_ms(wait), ls if f.queued else v)
            line2.append(f" ({f.queued} queued)" if f.queued else "", lab)
            line2.append("   send slip p99 ", lab)
            line2.append(format_ms(slip), ls)
            cpu = "–" if math.isnan(self._cpu_pct) else f"{self._cpu_pct:.0f}%"
            line2.append("   load CPU ", lab)
            line2.append(cpu, v)
            if level != "level--green":
                line2.append("   ⚠ client-bound", ls)
        else:
            line2.append("Client  waiting for the first telemetry…", lab)
        return Group(line1, line2)
