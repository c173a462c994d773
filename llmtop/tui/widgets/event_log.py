"""The event log: rate changes, SLO breaches, errors by kind, snapshots saved."""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

from llmtop.tui.model import format_elapsed

MAX_LINES = 1000


class EventLog(RichLog):
    """Time-stamped with the run's elapsed time (from telemetry, so tests stay deterministic).

    It never takes focus: the arrow and page keys belong to the rate, not to scrolling; so a
    long line wraps at the log's width (never a minimum wider than the panel) instead of
    being cut off where no key could scroll to it.
    """

    can_focus = False

    def __init__(self, **kw: object) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=True, min_width=1, markup=False, **kw)  # type: ignore[arg-type]
        self.border_title = "events"
        self.lines_text: list[str] = []  # plain copies, for tests and the curious
        self._events: list[Text] = []  # what was written, to rewrap on a resize
        self._wrapped_at = 0

    def event(self, elapsed_s: float, text: str, style: str = "") -> None:
        stamp = format_elapsed(elapsed_s)
        line = Text.assemble((stamp + " ", "dim"), (text, style))
        self.lines_text.append(f"{stamp} {text}")
        del self.lines_text[:-MAX_LINES]
        self._events.append(line)
        del self._events[:-MAX_LINES]
        self._put(line)

    def _put(self, line: Text) -> None:
        """Write wrapped at the log's own width (not the console's, nor a minimum)."""
        width = self.scrollable_content_region.width
        self.write(line, width=width if width > 0 and self._wrapped_at else None)

    def on_resize(self, event: Resize) -> None:
        """Wrapped lines keep the width they were written at: rewrap at the new one."""
        super().on_resize(event)
        width = self.scrollable_content_region.width
        if width > 0 and width != self._wrapped_at:
            self._wrapped_at = width
            self.clear()
            for line in self._events:
                self._put(line)
