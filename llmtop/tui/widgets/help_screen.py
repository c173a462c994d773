"""The `?` screen: every key, and what each metric on screen measures."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from llmtop.metrics.catalog import CATALOG

KEYS = (
    ("↑ / ↓", "rate (or concurrency) up / down one step"),
    ("PgUp / PgDn", "double / halve the rate"),
    ("=", "type an exact rate"),
    ("space", "pause / resume arrivals (requests in flight finish)"),
    ("r", "reset the sliding window (gauges show only what comes next)"),
    ("s", "save a snapshot now (the path appears in the event log)"),
    ("l", "type the SLO (as --slo); gauges and `a` use it"),
    ("a", "find the knee (needs an SLO; ↑/↓ takes over)"),
    ("p", "percentile spectrum, client beside server (p: back)"),
    ("?", "this help"),
    ("q / Ctrl-C", "stop the load and quit; what was measured is kept"),
)
# what the screen shows besides the live metrics (their definitions come from the catalog)
MORE = (
    ("window", "gauges are p50 / p99 over the sliding window (--window, default 10 s)"),
    ("gauge bar", "█ up to p50, ▓ up to p99, │ the SLO limit; amber ≥ 80 % of it, red past it"),
    ("curve", "one point per rate step held ≥ 2 s: p99 vs achieved req/s"),
)


class HelpScreen(ModalScreen[None]):
    """Keys and metric definitions; any of escape, q or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "close", show=True),
    ]

    def __init__(self, knee: bool = False, rate_step: float = 0.1) -> None:
        super().__init__()
        self.knee = knee
        self.rate_step = rate_step

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold")
        keys.add_column()
        for key, what in KEYS:
            if key == "a" and not self.knee:
                continue
            if key == "↑ / ↓":
                what = f"{what} ({self.rate_step:.0%}, --rate-step)"
            keys.add_row(key, what)
        metrics = Table.grid(padding=(0, 2))
        metrics.add_column(style="bold")
        metrics.add_column()
        for m in CATALOG:
            if m.live:
                metrics.add_row(m.label, m.definition)
        for label, definition in MORE:
            metrics.add_row(label, definition)
        with VerticalScroll(id="help-body"):
            yield Static(Text("Keys", style="bold underline"))
            yield Static(keys)
            yield Static(Text("\nWhat the figures mean", style="bold underline"))
            yield Static(metrics)
            yield Static(Text("\nescape closes this screen", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#help-body").border_title = "llmtop help"
