"""Exports for other tools: HdrHistogram interval logs, per-request JSONL, the step table CSV.

`.hlog` files are what HdrHistogram's own tools read (HistogramLogProcessor, HdrHistogram
plotters, hdrh's `HistogramLogReader`), so a run can be re-cut over any time range without
llmtop. The per-request log is a sink the session feeds as records arrive, so nothing of a
long run is held in memory just to write it at the end.
"""

from __future__ import annotations

import csv
import io
import json
import math
from array import array
from pathlib import Path
from typing import Any, TextIO

from hdrh.log import HistogramLogWriter

from llmtop.errors import LlmtopError, redact
from llmtop.metrics.catalog import GAUGE_METRICS, INTERVAL_METRICS
from llmtop.metrics.records import RequestRecord
from llmtop.output.jsonfile import clean, write_text_atomic
from llmtop.output.snapshot import histogram_of
from llmtop.output.writable import HeldSignals


class ExportError(LlmtopError):
    """An export that cannot be written."""


def write_hlog(snap: dict[str, Any], metric: str, out: TextIO) -> int:
    """One metric's interval log: the 1-second intervals, else one interval per rate step.

    Timestamps are seconds from the start of the run; values are microseconds, so the
    "Interval_Max" column is written in milliseconds (max_value_unit_ratio 1000).
    Returns the number of intervals written.
    """
    nodes = snap.get("intervals") or []
    kind = "1-second intervals"
    if not any((n.get("histograms") or {}).get(metric) for n in nodes):
        nodes, kind = snap.get("steps") or [], "rate steps"
    writer = HistogramLogWriter(out)
    writer.output_comment(f"[llmtop {snap.get('llmtop_version', '')}: {metric}, {kind}]")
    run = redact(f"{snap.get('label', '')}, created {snap.get('created', '')}")
    writer.output_comment(f"[run: {run}]")
    writer.output_comment("[values in microseconds; Interval_Max in milliseconds]")
    writer.output_log_format_version()
    writer.output_comment("[BaseTime: 0.000 (seconds since the start of the run)]")
    writer.output_legend()
    written = 0
    for i, node in enumerate(nodes):
        h = histogram_of(node, metric, f"{kind} {i}")
        if h is None:
            continue
        start = float(node.get("start_s") or 0.0)
        end = float(node.get("end_s") or start)
        # hdrh treats a 0 timestamp as "take it from the histogram": give it the same value.
        h.set_start_time_stamp(round(start * 1000))
        h.set_end_time_stamp(round(end * 1000))
        writer.output_interval_histogram(h, start, end, max_value_unit_ratio=1000.0)
        written += 1
    return written


def write_hlogs(
    snap: dict[str, Any],
    out_dir: str | Path,
    metrics: tuple[str, ...] = GAUGE_METRICS,
) -> list[Path]:
    """`<dir>/<metric>.hlog` for each metric that holds samples."""
    out = Path(out_dir)
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for m in metrics:
            buf = io.StringIO()
            if write_hlog(snap, m, buf):
                path = out / f"{m}.hlog"
                write_text_atomic(path, buf.getvalue())  # whole or absent, as every output
                paths.append(path)
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return paths


STEP_COLUMNS = (
    ("step", "index"),
    ("label", "label"),
    ("offered", "offered"),
    ("duration_s", "duration_s"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("error_rate", "error_rate"),
    ("request_throughput", "request_throughput"),
    ("output_throughput", "output_throughput"),
    ("goodput", "goodput"),
    ("slo_ok", "slo_ok"),
)
STEP_METRICS = INTERVAL_METRICS  # the metrics with a time series get step columns too
STEP_STATS = ("p50", "p90", "p99", "p99.9", "mean", "max")


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else round(v, 4)
    return v


def write_steps_csv(snap: dict[str, Any], out: TextIO) -> int:
    """The step table: one row per rate step, percentiles in milliseconds."""
    header = [name for name, _ in STEP_COLUMNS] + [
        f"{m}_{st}_ms" for m in STEP_METRICS for st in STEP_STATS
    ]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    rows = 0
    for step in snap.get("steps") or [_whole_run(snap)]:
        row = [_cell(step.get(key)) for _, key in STEP_COLUMNS]
        for m in STEP_METRICS:
            figures = step.get(f"{m}_ms") or {}
            row += [_cell(figures.get(st)) for st in STEP_STATS]
        w.writerow(row)
        rows += 1
    return rows


def _whole_run(snap: dict[str, Any]) -> dict[str, Any]:
    """The one row of a run without steps (a `run --json` result): the whole run."""
    s = snap.get("summary") or {}
    done = (s.get("completed") or 0) + (s.get("failed") or 0)
    slo = s.get("slo")
    return {
        **s,
        "index": 0,
        "label": "whole run",
        "offered": (snap.get("plan") or {}).get("request_rate"),
        "error_rate": (s.get("failed") or 0) / done if done else None,
        "slo_ok": slo.get("ok") if isinstance(slo, dict) else None,
    }


def write_series_jsonl(snap: dict[str, Any], out: TextIO) -> int:
    """The 1-second time series, one JSON object a line (`t_s` from the start of the run)."""
    rows = 0
    for point in snap.get("series") or []:
        out.write(json.dumps(clean(point), separators=(",", ":")) + "\n")
        rows += 1
    return rows


class RequestLog:
    """Per-request JSONL (`--save-requests`): one line per finished request, as it arrives.

    Times are milliseconds from `start_ns` (the session's start); latencies follow the
    definitions in DESIGN.md. The session calls `on_record(rec, step)` for each record it
    hands the collector, and `close()` at the end. A write that fails mid-run (a full disk)
    stops the log, never the run: `error` says why and `count` how many rows made it.
    """

    def __init__(self, path: str | Path, start_ns: int = 0) -> None:
        self.path = Path(path)
        self.start_ns = start_ns
        self.count = 0
        self.error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f: TextIO | None = self.path.open("w", encoding="utf-8", buffering=1 << 16)
        except OSError as exc:
            raise ExportError(
                f"cannot write --save-requests {path}: {exc.strerror or exc}"
            ) from None

    def on_record(self, rec: RequestRecord, step: int | None = None) -> None:
        if self._f is None:
            return
        row = request_row(rec, self.start_ns, step)
        if row["detail"]:
            row["detail"] = redact(row["detail"])
        try:
            self._f.write(json.dumps(row, separators=(",", ":")) + "\n")
        except OSError as exc:
            self._fail(exc)
            return
        self.count += 1

    def _fail(self, exc: OSError) -> None:
        self.error = exc.strerror or str(exc)
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def close(self) -> None:
        """Flush and close; a signal meanwhile waits, so the last line is never cut."""
        if self._f is not None:
            with HeldSignals():
                try:
                    self._f.close()
                except OSError as exc:
                    self._fail(exc)
                self._f = None

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def request_row(rec: RequestRecord, start_ns: int = 0, step: int | None = None) -> dict[str, Any]:
    """One request's facts and derived latencies (ms), JSON-ready."""
    chunks = array("q")
    chunks.frombytes(rec.chunk_ns)
    row: dict[str, Any] = {
        "intended_ms": _ms(rec.intended_ns - start_ns),
        "send_ms": _ms(rec.send_ns - start_ns),
        "step": step,
        "measured": rec.measured,
        "error": rec.error,
        "detail": rec.detail or None,
        "prompt_tokens": rec.prompt_tokens if rec.prompt_tokens >= 0 else None,
        "output_tokens": rec.output_tokens,
        "chunks": len(chunks),
        "send_slip_ms": _ms(rec.send_ns - rec.intended_ns),
        "queue_wait_ms": _ms(rec.slot_ns - rec.intended_ns),
        "ttft_ms": None,
        "tpot_ms": None,
        "e2el_ms": None,
        "e2el_from_intended_ms": None,
    }
    if rec.first_ns:
        row["ttft_ms"] = _ms(rec.first_ns - rec.send_ns)
        row["e2el_ms"] = _ms(rec.last_ns - rec.send_ns)
        row["e2el_from_intended_ms"] = _ms(rec.last_ns - rec.intended_ns)
        if rec.output_tokens > 1:
            row["tpot_ms"] = round((rec.last_ns - rec.first_ns) / (rec.output_tokens - 1) / 1e6, 3)
    return row
