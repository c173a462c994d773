"""A small dialog to type an exact rate (or concurrency in closed loop)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from llmtop.tui.model import parse_rate


class RateInputScreen(ModalScreen[float | None]):
    """Returns the rate typed, or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]
    # Labels wrap inside the dialog rather than run past its border.
    DEFAULT_CSS = "#rate-dialog Label { width: 100%; }"

    def __init__(self, current: float, closed_loop: bool) -> None:
        super().__init__()
        self.current = current
        self.closed_loop = closed_loop

    def compose(self) -> ComposeResult:
        what = "concurrency (requests in flight)" if self.closed_loop else "rate (req/s)"
        with Vertical(id="rate-dialog"):
            yield Label(f"New {what}:")
            yield Label("Enter applies, Esc cancels", id="rate-hint")
            yield Input(value=f"{self.current:g}", id="rate-value")
            yield Label("", id="rate-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            rate = parse_rate(event.value)
            if self.closed_loop and rate != int(rate):
                raise ValueError("concurrency is a whole number of requests")
        except ValueError as exc:
            self.query_one("#rate-error", Label).update(Text(str(exc)))  # as typed: no markup
            return
        self.dismiss(rate)

    def action_cancel(self) -> None:
        self.dismiss(None)
