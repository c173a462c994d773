"""The workers line: one entry per load worker (CPU, send slip) and the guard's warning.

Shown only when the load is split (`--workers`, `--ray`) or the client is the bottleneck, so
the default screen stays as it is.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.metrics.telemetry import Telemetry


def _num(v: float | None, unit: str, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


class WorkersLine(Widget):
    """`workers 3 │ #0 CPU 45% slip 0.2 ms │ #1 … │ CLIENT-BOUND: …` (one line)."""

    DEFAULT_CSS = """
    WorkersLine { height: 1; padding: 0 1; display: none; }
    WorkersLine > .workers--label { color: $text-muted; }
    WorkersLine > .workers--lost { color: $error; }
    WorkersLine > .workers--bound { color: $error; text-style: bold; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"workers--label", "workers--lost", "workers--bound"}
    frame: reactive[Telemetry | None] = reactive(None)

    def watch_frame(self, frame: Telemetry | None) -> None:
        self.display = frame is not None and (len(frame.workers) > 1 or bool(frame.client_bound))

    def render(self) -> Text:
        f = self.frame
        if f is None:
            return Text("")
        label = self.get_component_rich_style("workers--label")
        lost = self.get_component_rich_style("workers--lost")
        bound = self.get_component_rich_style("workers--bound")
        parts: list[tuple[str, object] | str] = [(f"workers {len(f.workers)}", label)]
        for w in f.workers:
            parts.append((" │ ", label))
            if w.lost:
                parts.append((f"#{w.id} lost", lost))
                continue
            parts.append(
                f"#{w.id} CPU {_num(w.cpu_pct, '%', 0)} slip p99 {_num(w.slip_p99_ms, ' ms', 2)}"
            )
        if f.client_bound:
            parts.append((" │ ", label))
            parts.append((f.client_bound, bound))
        return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
