"""Exports: .hlog read back with hdrh's own reader, the step CSV, the per-request JSONL sink."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from llmtop.metrics.hdr import new_histogram
from llmtop.metrics.intervals import step_index_of
from llmtop.output.exports import RequestLog, write_hlogs, write_steps_csv
from llmtop.output.snapshot import build_snapshot, load_snapshot
from tests.test_snapshot import EXTRA, FIXTURES, filled_session, record


def test_hlog_reads_back_with_hdrh_reader(tmp_path: Path) -> None:
    snap = build_snapshot(filled_session(), EXTRA)
    paths = write_hlogs(snap, tmp_path)
    assert {p.name for p in paths} == {"ttft.hlog", "tpot.hlog", "itl.hlog", "e2el.hlog"}
    reader = HistogramLogReader(str(tmp_path / "ttft.hlog"), new_histogram())
    total = new_histogram()
    n = 0
    while (h := reader.get_next_interval_histogram()) is not None:
        total.add(h)
        n += 1
    reader.close()
    assert n == len(snap["intervals"]) >= 2
    assert total.get_total_count() == snap["summary"]["ttft_ms"]["count"]
    assert total.get_value_at_percentile(99) / 1000 == snap["summary"]["ttft_ms"]["p99"]


def test_hlog_falls_back_to_steps_without_intervals(tmp_path: Path) -> None:
    snap = load_snapshot(FIXTURES / "v0-trtllm-128-128.json")  # no 1-second intervals
    write_hlogs(snap, tmp_path, ("ttft",))
    text = (tmp_path / "ttft.hlog").read_text()
    assert "rate steps" in text and text.count("HISTF") == len(snap["steps"])


def test_steps_csv(tmp_path: Path) -> None:
    snap = build_snapshot(filled_session(), EXTRA)
    buf = io.StringIO()
    assert write_steps_csv(snap, buf) == 2
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [float(r["offered"]) for r in rows] == [2.0, 4.0]
    assert float(rows[0]["ttft_p99_ms"]) == snap["steps"][0]["ttft_ms"]["p99"]
    assert rows[1]["slo_ok"] in ("True", "False")


def test_request_log_sink(tmp_path: Path) -> None:
    t0 = 10_000_000_000
    with RequestLog(tmp_path / "r" / "req.jsonl", start_ns=t0 - 1_000_000) as log:
        log.on_record(record(t0, 25.0, 10.0, 5), step=0)
        failed = record(t0, 1.0, 1.0, 1)._replace(
            error="http_500", detail="boom", first_ns=0, last_ns=0
        )
        log.on_record(failed, step=1)
    lines = [json.loads(x) for x in (tmp_path / "r" / "req.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and log.count == 2
    ok, bad = lines
    assert ok["ttft_ms"] == 25.0 and ok["tpot_ms"] == 10.0 and ok["send_ms"] == 1.0
    assert ok["e2el_ms"] == 65.0 and ok["chunks"] == 5 and ok["step"] == 0
    assert bad["error"] == "http_500" and bad["ttft_ms"] is None and bad["detail"] == "boom"
    # a JSONL consumer's histogram agrees with the collector's to HDR's 3 significant figures
    h = HdrHistogram(1, 3_600_000_000, 3)
    h.record_value(round(ok["ttft_ms"] * 1000))
    assert abs(h.get_value_at_percentile(50) - 25_000) <= 25


def test_step_index_of() -> None:
    steps = filled_session(steps=2, per_step=2).collector.steps
    assert step_index_of(steps, steps[0].start_ns - 1) is None
    assert step_index_of(steps, steps[0].start_ns) == 0
    assert step_index_of(steps, steps[1].start_ns + 5) == 1
