"""Server-side metrics (running, waiting, KV-cache use, preemptions); hidden when the server
exposes none (`Telemetry.server is None`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from rich.console import Group
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.tui.model import AMBER_AT

KV_RED_AT = 0.95


class ServerPanel(Widget):
    """What the engine says about itself, sampled about once a second."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rate--value",
        "rate--label",
        "level--green",
        "level--amber",
        "level--red",
    }
    server: reactive[dict[str, Any] | None] = reactive(None)

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.border_title = "server"

    def watch_server(self, server: dict[str, Any] | None) -> None:
        self.display = server is not None

    def render(self) -> Group:
        v = self.get_component_rich_style("rate--value")
        lab = self.get_component_rich_style("rate--label")
        s = self.server or {}
        lines = []

        def row(name: str, value: str, style: Any = v) -> None:
            lines.append(Text.assemble((f"{name:<12}", lab), (value, style), no_wrap=True))

        row("running", _num(s.get("running")))
        row("waiting", _num(s.get("waiting")))
        kv = s.get("kv_cache_usage")
        if isinstance(kv, int | float) and not math.isnan(kv):
            level = "level--green"
            if kv >= KV_RED_AT:
                level = "level--red"
            elif kv >= AMBER_AT:
                level = "level--amber"
            row("KV cache", f"{kv:.0%}", self.get_component_rich_style(level))
        else:
            row("KV cache", "–")
        row("preemptions", _num(s.get("preemptions_total", s.get("preemptions"))))
        hit = s.get("prefix_cache_hit_rate")
        if isinstance(hit, int | float) and not math.isnan(hit):
            row("prefix hits", f"{hit:.0%}")
        gen = s.get("generation_tps")
        if isinstance(gen, int | float) and not math.isnan(gen):
            row("gen tok/s", f"{gen:,.0f}")
        return Group(*lines)


def _num(x: Any) -> str:
    if isinstance(x, int | float) and not math.isnan(x):
        return f"{x:,.0f}"
    return "–"
