"""A small dialog to type the SLO (the `l` key), parsed exactly as `--slo` is."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from llmtop.errors import redact
from llmtop.slo import Slo, SloError


class SloInputScreen(ModalScreen[Slo | None]):
    """Returns the SLO typed (an empty one clears it), or None when cancelled.

    A limit that does not parse keeps the dialog open with `--slo`'s one-line error, so the
    SLO in force never changes to something half-typed.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = "#slo-dialog Label { width: 100%; }"

    def __init__(self, current: Slo) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="slo-dialog"):
            yield Label("SLO (as --slo, e.g. ttft_p99<=1s,tpot_p99<=50ms,error_rate<=1%):")
            yield Label("Enter applies (empty: no SLO), Esc cancels", id="slo-hint")
            yield Input(value=self.current.text, id="slo-value")
            yield Label("", id="slo-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            slo = Slo.parse(event.value)
        except SloError as exc:
            error = redact(str(exc)).splitlines()[0]
            self.query_one("#slo-error", Label).update(Text(error))  # as typed: no markup
            return
        self.dismiss(slo)

    def action_cancel(self) -> None:
        self.dismiss(None)
