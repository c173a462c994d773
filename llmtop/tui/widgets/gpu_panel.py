"""GPU telemetry beside the load: utilisation, power, memory per GPU and in total.

Hidden unless the server sample carries `"gpu"` (--gpu-metrics, or `llmtop launch` on a host
where NVML works). Values are the last read (about once a second).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from rich.console import Group
from rich.markup import escape
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from llmtop.errors import redact

MAX_ROWS = 8  # GPUs listed one a line; more are summed in the total only


def gpu_rows(gpu: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, 'util % · W · GiB') per GPU and a total line: the panel's content."""

    def cells(g: dict[str, Any]) -> str:
        util = _fmt(g.get("util_pct"), "{:.0f}%")
        watts = _fmt(g.get("power_w"), "{:,.0f} W")
        mem = g.get("memory_used_mib")
        gib = _fmt(mem / 1024 if isinstance(mem, int | float) else None, "{:.1f} GiB")
        return f"{util:>5} {watts:>8} {gib:>9}"

    gpus = gpu.get("gpus", [])[:MAX_ROWS]
    rows = [(redact(f"gpu {g.get('gpu', '?')}"), cells(g)) for g in gpus]  # a label it sent
    total = gpu.get("total") or {}
    if len(gpu.get("gpus", [])) != 1:
        rows.append((f"all {total.get('gpus', 0)}", cells(total)))
    return rows


class GpuPanel(Widget):
    """The GPUs the engine runs on, read through DCGM or NVML."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"rate--value", "rate--label"}
    server: reactive[dict[str, Any] | None] = reactive(None)

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.border_title = "gpu"

    def watch_server(self, server: dict[str, Any] | None) -> None:
        gpu = (server or {}).get("gpu")
        self.display = isinstance(gpu, dict)
        if isinstance(gpu, dict):
            self.border_title = escape(redact(f"gpu ({gpu.get('source', '?')})"))

    def render(self) -> Group:
        v = self.get_component_rich_style("rate--value")
        lab = self.get_component_rich_style("rate--label")
        gpu = (self.server or {}).get("gpu")
        if not isinstance(gpu, dict):
            return Group(Text("–", lab))
        return Group(
            *(
                Text.assemble((f"{name:<7}", lab), (value, v), no_wrap=True)
                for name, value in gpu_rows(gpu)
            )
        )


def _fmt(x: Any, fmt: str) -> str:
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return fmt.format(x)
    return "–"
