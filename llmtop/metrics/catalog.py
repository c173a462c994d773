"""The one table of metrics: name, label, unit, what exactly it measures, and where it shows.

Every list of metric names in llmtop is read from here (the collector's histograms, the live
window, the UI gauges, the snapshot's 1-second intervals, the console table, the help screen,
the exports), and so is every definition text: a metric is added, renamed or re-explained in
one row. Definitions follow DESIGN.md; tools disagree on names (AIPerf's "ITL" is vLLM's
TPOT), so each label travels with its definition.

Which metrics an SLO may name is the SLO language's own vocabulary (`llmtop.slo`, the layer
below this one, which must not import upwards); the `slo` column is read from it, and a test
checks that every SLO metric has a row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmtop.slo import LATENCY_METRICS, RATE_METRICS


@dataclass(frozen=True)
class Metric:
    """One row of the catalog."""

    name: str  # the key: `{name}_ms` in summaries, histogram names, SLO names
    label: str  # how screens and tables title it
    unit: str  # as reported: "ms" for latencies (their histograms hold µs), "req/s", "fraction"
    definition: str  # exactly what is measured, shown beside the figure
    recorded: bool = True  # a collector histogram: in the summary, every step and snapshots
    live: bool = False  # shown over the sliding window (telemetry, the UI, the help screen)
    gauge: bool = False  # a latency gauge of the UI; exported as .hlog by default
    per_second: bool = False  # kept per 1-second interval in snapshots; step CSV columns
    spectrum: bool = False  # in the report's percentile-spectrum plot

    @property
    def slo(self) -> bool:
        """An SLO may set a limit on it (`--slo`)."""
        return self.name in LATENCY_METRICS or self.name in RATE_METRICS


def _latency(name: str, label: str, definition: str, **where: bool) -> Metric:
    return Metric(name, label, "ms", definition, **where)


CATALOG: tuple[Metric, ...] = (
    _latency(
        "ttft",
        "TTFT",
        "send → first generated token (reasoning or answer)",
        live=True,
        gauge=True,
        per_second=True,
        spectrum=True,
    ),
    _latency(
        "tpot",
        "TPOT",
        "(E2E − TTFT) / (output tokens − 1), per request",
        live=True,
        gauge=True,
        per_second=True,
        spectrum=True,
    ),
    _latency(
        "itl",
        "ITL",
        "gap between token chunks, split per token",
        live=True,
        gauge=True,
        per_second=True,
        spectrum=True,
    ),
    _latency("e2el", "E2E", "send → last token", live=True, gauge=True, per_second=True),
    _latency("ttft_from_intended", "TTFT*", "intended send → first token"),
    _latency(
        "ttft_reasoning",
        "TTFT think",
        "send → first reasoning token (reasoning_content / reasoning deltas)",
    ),
    _latency("ttft_answer", "TTFT answer", "send → first answer token, after the reasoning"),
    _latency("e2el_from_intended", "E2E*", "intended send → last token"),
    _latency(
        "send_slip",
        "send slip",
        "actual send − intended send (open-loop schedule); high = client-bound",
        live=True,
        per_second=True,
    ),
    _latency(
        "queue_wait",
        "queue wait",
        "wait for a --max-concurrency slot (the client's own queue)",
        live=True,
    ),
    Metric(
        "goodput",
        "goodput",
        "req/s",
        "completed req/s within every per-request SLO limit",
        recorded=False,
        live=True,
    ),
    Metric(
        "error_rate",
        "error rate",
        "fraction",
        "failed / (completed + failed)",
        recorded=False,
    ),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOG}

# The name lists the code iterates, in the catalog's order.
METRICS: tuple[str, ...] = tuple(m.name for m in CATALOG if m.recorded)  # collector histograms
LIVE_METRICS: tuple[str, ...] = tuple(m.name for m in CATALOG if m.recorded and m.live)
GAUGE_METRICS: tuple[str, ...] = tuple(m.name for m in CATALOG if m.gauge)
INTERVAL_METRICS: tuple[str, ...] = tuple(m.name for m in CATALOG if m.per_second)
SPECTRUM_METRICS: tuple[str, ...] = tuple(m.name for m in CATALOG if m.spectrum)


def rows(names: tuple[str, ...]) -> tuple[Metric, ...]:
    """The catalog rows of `names`, in that order."""
    return tuple(BY_NAME[n] for n in names)
