"""The run header: what is being loaded, how, and for how long."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.errors import redact
from llmtop.metrics.telemetry import Telemetry
from llmtop.tui.model import RunInfo, format_elapsed


class RunHeader(Widget):
    """One line: target URL, engine (or "simulated: …"), model, load mode, elapsed, state."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"header--name", "header--dim", "header--state"}
    frame: reactive[Telemetry | None] = reactive(None)
    state: reactive[str] = reactive("starting")

    def __init__(self, info: RunInfo, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.info = info
        # the URL, engine label and model id are the server's words: no terminal controls
        self._url, self._engine, self._model = redact([info.url, info.engine, info.model])

    def render(self) -> Text:
        name = self.get_component_rich_style("header--name")
        dim = self.get_component_rich_style("header--dim")
        st = self.get_component_rich_style("header--state")
        f = self.frame
        elapsed = format_elapsed(f.elapsed_s) if f else "--:--:--"
        sep = (" │ ", dim)
        return Text.assemble(
            (" llmtop ", name),
            (f" {self.state} ", st),
            (elapsed, ""),
            sep,
            (self._url or "(no target)", ""),
            sep,
            (self._engine, ""),
            sep,
            (self._model or "?", ""),
            sep,
            (self.info.mode, ""),
            no_wrap=True,
            overflow="ellipsis",
        )
