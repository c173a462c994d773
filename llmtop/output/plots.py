"""Report pictures (PNG and SVG) from snapshots, and the Markdown page that ties them together.

matplotlib is an optional extra (`pip install 'llmtop[report]'`): it is heavy and only the
report needs it, so it is imported here, on first use, with a clear error when missing.
Every figure draws one line per snapshot so engines can be read side by side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmtop.errors import LlmtopError, redact
from llmtop.metrics import catalog
from llmtop.metrics.serverside import run_histograms, spectrum_ms
from llmtop.output.compare import compare_snapshots, fmt_value, render, snapshot_name, workload_key
from llmtop.output.kneeplot import AXIS_LABELS, knee_figure, legend_names
from llmtop.output.snapshot import histogram_of

FORMATS = ("png", "svg")
SPECTRUM_METRICS = tuple((m.name, m.label) for m in catalog.rows(catalog.SPECTRUM_METRICS))
if "e2el" not in catalog.SPECTRUM_METRICS:  # issue 15: TTFT / ITL / E2E beside the server's
    SPECTRUM_METRICS += (("e2el", "E2E"),)
# Percentiles of the spectrum: 0 and then 1 - 10^(-k/10), up to 99.999 %.
SPECTRUM_PERCENTILES = (0.0, *(100.0 * (1 - 10 ** (-k / 10)) for k in range(1, 51)))


class ReportError(LlmtopError):
    """The report cannot be made (plotting library missing, output not writable)."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            "llmtop report needs matplotlib: pip install 'llmtop[report]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.hashsalt"] = "llmtop"  # stable SVG ids between runs
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, smaller
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        meta = {"Date": None} if fmt == "svg" else {}
        fig.savefig(path, dpi=120, bbox_inches="tight", metadata=meta)
        paths.append(path)
    return paths


def _num(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if v == "inf":
        return math.inf
    return math.nan


def spectrum(snap: dict[str, Any], metric: str) -> tuple[list[float], list[float]]:
    """(percentile, value ms) pairs of the whole-run histogram, HdrHistogram-plot style."""
    h = histogram_of(snap, metric, snapshot_name(snap))
    if h is None:
        return [], []
    n = h.get_total_count()
    # Beyond 1 - 1/n the percentiles repeat the maximum: stop there.
    top = 100.0 * (1 - 1 / max(n, 1)) if n > 1 else 0.0
    pcts = [p for p in SPECTRUM_PERCENTILES if p <= top + 1e-9] or [0.0]
    values = h.get_percentile_to_value_dict(pcts)
    xs = [p for p in pcts]
    ys = [values[p] / 1000 for p in pcts]
    xs.append(100.0 * (1 - 1 / (n + 1)))  # the maximum, placed just beyond the last sample
    ys.append(h.get_max_value() / 1000)
    return xs, ys


def server_spectrum(snap: dict[str, Any], metric: str) -> tuple[list[float], list[float]]:
    """(percentile, ms) from the server's own histogram of `metric` over the run (its
    scrapes before and after), interpolated linearly within buckets; ([], []) without."""
    pair = run_histograms(snap.get("server_series") or []).get(metric)
    if pair is None:
        return [], []
    qs = [p / 100 for p in SPECTRUM_PERCENTILES if p <= 99.99 + 1e-9]
    pts = spectrum_ms(pair[0], pair[1], qs)
    return [q * 100 for q, _ in pts], [v for _, v in pts]


def plot_spectrum(
    snaps: list[dict[str, Any]], out: Path, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """TTFT / TPOT / ITL against percentile, x = 1/(1-p) on a log axis (as HdrHistogram)."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(SPECTRUM_METRICS), figsize=(5 * len(SPECTRUM_METRICS), 4.5), squeeze=False
    )
    ticks = [1, 10, 100, 1000, 10_000, 100_000]
    tick_labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
    for ax, (metric, title) in zip(axes[0], SPECTRUM_METRICS, strict=True):
        drawn = False
        for snap, name in zip(snaps, legend_names(snaps), strict=True):
            xs, ys = spectrum(snap, metric)
            if not xs:
                continue
            inv = [1 / (1 - p / 100) for p in xs]
            (line,) = ax.plot(inv, ys, label=name, linewidth=1.6)
            drawn = True
            sx, sy = server_spectrum(snap, metric)
            if sx:  # the server's own view, dashed in the same colour
                ax.plot(
                    [1 / (1 - p / 100) for p in sx],
                    sy,
                    linestyle="--",
                    linewidth=1.2,
                    color=line.get_color(),
                    label=f"{name} (server)",
                )
        ax.set_xscale("log")
        ax.set_xticks(ticks, tick_labels)
        ax.set_xlim(1, 100_000)
        ax.set_xlabel("percentile")
        ax.set_ylabel(f"{title} (ms)")
        ax.set_title(f"{title} percentile spectrum")
        ax.grid(True, which="major", alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    paths = _save(fig, out, "percentiles", formats)
    plt.close(fig)
    return paths


def plot_knee(
    snaps: list[dict[str, Any]], out: Path, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """Throughput and latency against the load offered, one point per judged step (no
    warm-ups or drains), every SLO limit on its panel, each snapshot's knee marked."""
    plt = _pyplot()
    fig_data = knee_figure(snaps)
    panels, axes_kinds = fig_data.panels, fig_data.axes
    fig, grid = plt.subplots(
        len(panels),
        len(axes_kinds),
        figsize=(9 * len(axes_kinds), 2.8 * len(panels) + 1),
        sharex="col",
        squeeze=False,
    )
    for i, line in enumerate(fig_data.lines):
        color = f"C{i % 10}"  # a snapshot keeps its colour in every column
        col = axes_kinds.index(line.axis)
        path_xs, path_steps = line.path()
        for row, panel in enumerate(panels):
            ax = grid[row][col]
            ys = [panel.value(s) for s in path_steps]
            style = "D--" if line.axis == "all at once" else "o-"
            ax.plot(path_xs, ys, style, label=line.name, color=color, linewidth=1.4)
            bad = [
                (x, panel.value(s))
                for x, s, v in zip(line.xs, line.steps, line.verdicts, strict=True)
                if v == "bad"
            ]
            if bad:  # steps that broke the SLO: hollow rings over their points
                ax.plot(*zip(*bad, strict=True), "o", mfc="none", ms=11, color=color)
            if panel.key == "request_throughput":
                goodput = [_num(s.get("goodput")) for s in path_steps]
                if any(not math.isnan(g) for g in goodput):
                    ax.plot(path_xs, goodput, "x--", color=color, alpha=0.7)
            for mark in line.knees:
                ax.axvline(mark.x, color=color, linestyle=":", alpha=0.8)
        first = grid[0][col]
        for mark in line.knees:
            first.plot(
                [mark.x],
                [mark.y],
                "*" if mark.sustained else "P",
                ms=14,
                color=color,
                label=f"{line.name}: {mark.text}",
            )
    for col, kind in enumerate(axes_kinds):
        for row, panel in enumerate(panels):
            ax = grid[row][col]
            for y, text in panel.limits:  # each limit named on its line, not only in a legend
                ax.axhline(y, color="grey", linestyle="--", linewidth=1, label=text)
                ax.text(
                    0.995,
                    y,
                    text,
                    transform=ax.get_yaxis_transform(),
                    ha="right",
                    va="bottom",
                    fontsize=7,
                    color="dimgrey",
                )
            ax.set_ylabel(panel.label)
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        grid[-1][col].set_xlabel(AXIS_LABELS[kind])
        grid[0][col].set_title(
            "Throughput and latency against "
            + ("offered load" if kind != "all at once" else "achieved load")
            + " (one point per judged step; rings: steps that broke the SLO)"
        )
    fig.tight_layout()
    paths = _save(fig, out, "knee", formats)
    plt.close(fig)
    return paths


def plot_series(
    snaps: list[dict[str, Any]], out: Path, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """The 1-second series: output tokens/s, TTFT p99 and TPOT p99 (sliding window)."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    rows = (
        ("output_tps", "output tokens/s"),
        ("ttft_p99_ms", "TTFT p99 (ms, window)"),
        ("tpot_p99_ms", "TPOT p99 (ms, window)"),
    )
    for snap, name in zip(snaps, legend_names(snaps), strict=True):
        series = snap.get("series") or []
        if not series:
            continue
        xs = [_num(p.get("t_s")) for p in series]
        for ax, (key, _) in zip(axes, rows, strict=True):
            ax.plot(xs, [_num(p.get(key)) for p in series], label=name)
    for ax, (_, label) in zip(axes, rows, strict=True):
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_title("Time series (one point a second)")
    axes[-1].set_xlabel("seconds since start")
    fig.tight_layout()
    paths = _save(fig, out, "timeseries", formats)
    plt.close(fig)
    return paths


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(snaps: list[dict[str, Any]], pictures: dict[str, list[Path]]) -> str:
    """The report page: what each snapshot holds, the pictures, the comparison table."""
    out = ["# llmtop report", ""]
    rows = []
    for snap, name in zip(snaps, legend_names(snaps), strict=True):
        s = snap.get("summary") or {}
        eng = snap.get("engine") or {}
        rows.append(
            [
                name,
                " ".join(str(x) for x in (eng.get("name"), eng.get("version")) if x) or "-",
                str(snap.get("model") or "-"),
                workload_key(snap),
                str(snap.get("load") or "-"),
                str(snap.get("slo") or "-"),
                str(s.get("completed", "-")),
                fmt_value(_num(s.get("output_throughput")), "tok/s"),
                fmt_value(_num((s.get("ttft_ms") or {}).get("p99")), "ms"),
                fmt_value(_num((s.get("tpot_ms") or {}).get("p99")), "ms"),
                str(len(snap.get("steps") or [])),
                str(snap.get("created") or "-"),
            ]
        )
    out.append("## Snapshots")
    out.append("")
    out.append(
        _md_table(
            [
                "snapshot",
                "engine",
                "model",
                "workload",
                "load",
                "SLO",
                "completed",
                "output tok/s",
                "TTFT p99 ms",
                "TPOT p99 ms",
                "steps",
                "taken",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        "TTFT: send → first generated token. TPOT: (E2E − TTFT) / (output tokens − 1), per "
        "request. ITL: gap between token chunks, split per token. E2E: send → last token."
    )
    captions = {
        "knee": (
            "Throughput and latency against offered load",
            "One point per judged step (warm-ups, drains and settles left out), at the rate "
            "or concurrency it offered; runs that sent everything at once are drawn on their "
            "own axis, at the rate they achieved. Rings: steps that broke the SLO. Dotted "
            "lines and stars mark a searched knee (a plus: unconfirmed), dashed ones each SLO "
            "limit, on the panel of the figure it limits.",
        ),
        "percentiles": (
            "Percentile spectrum",
            "Whole-run latency at each percentile; the x axis is 1/(1−p), as HdrHistogram plots. "
            "Dashed: the server's own histograms (where it exports them), interpolated "
            "linearly within its buckets.",
        ),
        "timeseries": ("Time series", "Sliding-window figures, one point a second."),
    }
    for stem, (title, caption) in captions.items():
        files = pictures.get(stem) or []
        png = next((p for p in files if p.suffix == ".png"), files[0] if files else None)
        if png is None:
            continue
        out += ["", f"## {title}", "", caption, "", f"![{title}]({png.name})"]
        others = [p.name for p in files if p != png]
        if others:
            out += ["", "Also: " + ", ".join(f"[{n}]({n})" for n in others)]
    out += ["", "## Comparison", "", "```", render(compare_snapshots(snaps), color=False), "```"]
    return "\n".join(out).rstrip() + "\n"


def write_report(
    snaps: list[dict[str, Any]], out_dir: str | Path, formats: tuple[str, ...] = FORMATS
) -> dict[str, list[Path]]:
    """All pictures and `report.md` into `out_dir`; returns what was written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror or exc}") from None
    _pyplot()  # the clear error before any work
    written: dict[str, list[Path]] = {}
    try:
        written["knee"] = plot_knee(snaps, out, formats)
        written["percentiles"] = plot_spectrum(snaps, out, formats)
        written["timeseries"] = plot_series(snaps, out, formats)
        page = out / "report.md"
        page.write_text(redact(markdown(snaps, written)), encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    written["page"] = [page]
    return written
