"""The event log: rate changes, SLO breaches, errors by kind, snapshots saved."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from llmtop.tui.model import format_elapsed

MAX_LINES = 1000


class EventLog(RichLog):
    """Time-stamped with the run's elapsed time (from telemetry, so tests stay deterministic).

    It never takes focus: the arrow and page keys belong to the rate, not to scrolling.
    """

    can_focus = False

    def __init__(self, **kw: object) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=False, markup=False, **kw)  # type: ignore[arg-type]
        self.border_title = "events"
        self.lines_text: list[str] = []  # plain copies, for tests and the curious

    def event(self, elapsed_s: float, text: str, style: str = "") -> None:
        stamp = format_elapsed(elapsed_s)
        line = Text.assemble((stamp + " ", "dim"), (text, style))
        self.lines_text.append(f"{stamp} {text}")
        del self.lines_text[:-MAX_LINES]
        self.write(line)
