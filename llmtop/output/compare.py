"""Side-by-side comparison of snapshots: per workload, per metric, ratio to the first.

Pure data first (`compare_snapshots` returns JSON-ready groups, the `--json` shape), then a
renderer: rich styling on a terminal (the better value bold green, the worse red), plain
text when piped, where a `*` marks the better value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtop.output.observe import per_gpu

# (key, label, unit, better, getter path) — better is "higher", "lower" or "" (information).
Row = tuple[str, str, str, str]
ROWS: tuple[Row, ...] = (
    ("request_throughput", "Request throughput", "req/s", "higher"),
    ("output_throughput", "Output throughput", "tok/s", "higher"),
    ("total_throughput", "Total throughput", "tok/s", "higher"),
    ("goodput", "Goodput (met every SLO)", "req/s", "higher"),
    ("ttft_ms.p50", "TTFT p50", "ms", "lower"),
    ("ttft_ms.p90", "TTFT p90", "ms", "lower"),
    ("ttft_ms.p99", "TTFT p99", "ms", "lower"),
    ("tpot_ms.p50", "TPOT p50", "ms", "lower"),
    ("tpot_ms.p90", "TPOT p90", "ms", "lower"),
    ("tpot_ms.p99", "TPOT p99", "ms", "lower"),
    ("itl_ms.p50", "ITL p50", "ms", "lower"),
    ("itl_ms.p99", "ITL p99", "ms", "lower"),
    ("e2el_ms.p50", "E2E p50", "ms", "lower"),
    ("e2el_ms.p99", "E2E p99", "ms", "lower"),
    ("error_rate", "Error rate", "%", "lower"),
    ("knee.rate", "Knee rate (highest within SLO)", "req/s", "higher"),
    ("knee.concurrency", "Knee concurrency (highest within SLO)", "", "higher"),
    ("knee.output_throughput", "Knee output throughput", "tok/s", "higher"),
    ("knee.goodput", "Knee goodput", "req/s", "higher"),
    # the server's own view and the cost of a token (issue 15; llmtop.output.observe)
    ("server_latency.ttft_ms.p50", "Server TTFT p50 (its buckets)", "ms", "lower"),
    ("server_latency.queue_ms.p50", "Server queue p50 (its buckets)", "ms", "lower"),
    ("output_throughput_per_gpu", "Output throughput per GPU", "tok/s", "higher"),
    ("gpu.energy_j_per_output_token", "Energy per output token", "J", "lower"),
    ("gpu.power_w_mean", "GPU power, mean of all", "W", ""),
    ("gpu.util_pct_mean", "GPU utilisation, mean", "%", ""),
    ("completed", "Completed requests", "", ""),
)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, str):
        return math.inf if v == "inf" else None
    if isinstance(v, int | float) and not math.isnan(v):
        return float(v)
    return None


def metric_value(snap: dict[str, Any], key: str) -> float | None:
    """One row's figure for a snapshot: the whole run's summary, or the knee."""
    s = snap.get("summary") or {}
    if key.startswith("knee."):
        knee = snap.get("knee") or {}
        if isinstance(knee.get("knee"), dict):  # snapshots before issue 11 nested it
            knee = knee["knee"]
        name = key[5:]
        if name in ("rate", "concurrency") and knee.get(name) is None:
            # a knee with its value only (a rate, unless its mode says concurrency): a rate
            # and a concurrency are never one row, where a ratio between them would mean nothing
            mode = knee.get("mode") or "rate"
            return _num(knee.get("value")) if mode == name else None
        return _num(knee.get(name))
    if key == "error_rate":
        done = (s.get("completed") or 0) + (s.get("failed") or 0)
        return 100.0 * (s.get("failed") or 0) / done if done else None
    if key == "output_throughput_per_gpu":
        return _num(per_gpu(snap)[0])
    v: Any = s
    for part in key.split("."):  # "ttft_ms.p50", "server_latency.ttft_ms.p50"
        v = v.get(part) if isinstance(v, dict) else None
    return _num(v)


def workload_key(snap: dict[str, Any]) -> str:
    """What makes two runs the same experiment: prompt/output lengths or the dataset."""
    w = snap.get("workload") or {}
    if w.get("dataset"):
        text = f"dataset {Path(str(w['dataset'])).name}"
    else:
        inp = w.get("input_dist") or w.get("input_len", "?")
        out = w.get("output_dist") or w.get("output_len", "?")
        text = f"{inp} in / {out} out"
    if w.get("shared_prefix_len"):
        text += f", shared prefix {w['shared_prefix_len']}"
    return text


def snapshot_name(snap: dict[str, Any]) -> str:
    return str(snap.get("label") or Path(str(snap.get("_path", "run"))).stem)


def describe(snap: dict[str, Any]) -> str:
    """One line: engine and version, model, load plan, where the file is."""
    eng = snap.get("engine") or {}
    parts = []
    if eng.get("name"):
        parts.append(" ".join(str(x) for x in (eng.get("name"), eng.get("version")) if x))
    if snap.get("model"):
        parts.append(str(snap["model"]))
    if snap.get("load"):
        parts.append(str(snap["load"]))
    if snap.get("slo"):
        parts.append(f"SLO {snap['slo']}")
    return ", ".join(parts)


@dataclass
class Group:
    workload: str
    snapshots: list[dict[str, Any]]
    names: list[str]


def group_snapshots(snaps: list[dict[str, Any]]) -> list[Group]:
    """Snapshots grouped by workload, in the order given; names unique across all."""
    labels = [snapshot_name(s) for s in snaps]
    names = [
        f"{name} ({Path(str(snaps[i].get('_path', i))).stem})" if labels.count(name) > 1 else name
        for i, name in enumerate(labels)
    ]
    groups: dict[str, Group] = {}
    for snap, name in zip(snaps, names, strict=True):
        key = workload_key(snap)
        groups.setdefault(key, Group(key, [], [])).snapshots.append(snap)
        groups[key].names.append(name)
    return list(groups.values())


def _best(values: list[float | None], better: str) -> int | None:
    known = [(v, i) for i, v in enumerate(values) if v is not None]
    if better not in ("higher", "lower") or len(known) < 2:
        return None
    pick = max(known) if better == "higher" else min(known)
    if all(v == pick[0] for v, _ in known):
        return None
    return pick[1]


def compare_snapshots(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparison as data (the `--json` shape)."""
    out_groups = []
    for g in group_snapshots(snaps):
        rows = []
        for key, label, unit, better in ROWS:
            values = [metric_value(s, key) for s in g.snapshots]
            if all(v is None for v in values):
                continue
            base = values[0]
            ratios = [
                (v / base if v is not None and base not in (None, 0.0) else None) for v in values
            ]
            rows.append(
                {
                    "metric": key,
                    "label": label,
                    "unit": unit,
                    "better": better or None,
                    "values": values,
                    "ratios": ratios,
                    "best": _best(values, better),
                }
            )
        out_groups.append(
            {
                "workload": g.workload,
                "snapshots": [
                    {
                        "name": n,
                        "path": s.get("_path"),
                        "engine": s.get("engine"),
                        "model": s.get("model"),
                        "load": s.get("load"),
                        "slo": s.get("slo"),
                        "describe": describe(s),
                    }
                    for n, s in zip(g.names, g.snapshots, strict=True)
                ],
                "rows": rows,
            }
        )
    return {"groups": out_groups}


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    if unit == "%":
        return f"{v:.2f}%"
    if not unit and v == int(v):
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"


def fmt_ratio(r: float | None) -> str:
    return "" if r is None or math.isinf(r) else f"{r:.2f}×"


def render(data: dict[str, Any], color: bool) -> str:
    """The comparison tables as text: rich-styled when `color`, plain otherwise."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(
        record=True,
        width=200,
        force_terminal=color,
        no_color=not color,
        color_system="standard" if color else None,
        file=_Null(),
    )
    for g in data["groups"]:
        names = [s["name"] for s in g["snapshots"]]
        table = Table(title=f"Workload: {g['workload']}", title_justify="left", show_lines=False)
        table.add_column("metric", no_wrap=True)
        for i, name in enumerate(names):
            table.add_column(name if i == 0 else f"{name} (× first)", justify="right")
        for row in g["rows"]:
            cells: list[Text | str] = [
                f"{row['label']}"
                + (f" ({row['unit']})" if row["unit"] and row["unit"] != "%" else "")
            ]
            for i, v in enumerate(row["values"]):
                text = fmt_value(v, row["unit"])
                if i > 0 and row["ratios"][i] is not None:
                    text += f"  {fmt_ratio(row['ratios'][i])}"
                best = row["best"]
                if best is None:
                    cells.append(text)
                elif i == best:
                    cells.append(Text(text, style="bold green") if color else text + " *")
                else:
                    cells.append(
                        Text(text, style="red")
                        if color and v is not None
                        else text + ("  " if not color else "")
                    )
            table.add_row(*cells)
        console.print(table)
        for s in g["snapshots"]:
            console.print(f"  {s['name']}: {s['describe'] or '-'}")
        console.print()
    if not color:
        console.print("* the better value (lower latency, higher throughput)")
    return console.export_text(styles=color)


class _Null:
    """A file that drops everything (the console is only recorded, then exported)."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass
