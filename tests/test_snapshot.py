"""Snapshots: round trip, HdrHistogram interoperability, older layouts, corrupt files."""

from __future__ import annotations

import json
import random
from array import array
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from llmtop.config import RunConfig, Target
from llmtop.metrics.records import RequestRecord
from llmtop.output.snapshot import (
    VERSION,
    SnapshotError,
    build_snapshot,
    load_snapshot,
    save_snapshot,
)
from llmtop.session import LoadSession
from llmtop.slo import Slo
from tests.conftest import ROOT, CliResult, assert_one_line_error

# Until cli.py registers `compare` / `report`, add them the way it will, then run main().
_MAIN = (
    "import sys; from llmtop.cli import cli, main; "
    "from llmtop.cli.snapshots import compare_command, report_command; "
    "[cli.add_command(c, n) for c, n in ((compare_command, 'compare'), "
    "(report_command, 'report')) if n not in cli.commands]; "
    "sys.argv[0] = 'llmtop'; main()"
)


def run_cli(*args: str, timeout: float = 120) -> CliResult:
    """`llmtop ARGS` in a child process, through the real entry point and its error handling."""
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _MAIN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    return CliResult(proc, None)


FIXTURES = Path(__file__).parent / "fixtures" / "snapshots"
MS = 1_000_000


def record(t0: int, ttft_ms: float, itl_ms: float, tokens: int) -> RequestRecord:
    first = t0 + round(ttft_ms * MS)
    stamps = array("q", [first + round(i * itl_ms * MS) for i in range(tokens)])
    return RequestRecord(
        intended_ns=t0,
        slot_ns=t0,
        send_ns=t0,
        first_ns=first,
        last_ns=stamps[-1],
        end_ns=stamps[-1],
        prompt_tokens=64,
        output_tokens=tokens,
        chunk_ns=stamps.tobytes(),
        chunk_tokens=array("i", [1] * tokens).tobytes(),
        error=None,
        detail="",
        measured=True,
    )


def filled_session(steps: int = 2, per_step: int = 200) -> LoadSession:
    """A real LoadSession (its load process never started) fed with synthetic records."""
    slo = Slo.parse("ttft_p99<=500ms")
    session = LoadSession(RunConfig(Target("http://x:8000"), window_s=10.0), slo)
    session.start_ns = 1_000 * MS
    collector, recorder = session.collector, session.interval_recorder
    rng = random.Random(7)
    t = session.start_ns
    for k in range(steps):
        collector.begin_step(t, 2.0 * (k + 1))
        for _ in range(per_step):
            t += 5 * MS
            collector.add([record(t, rng.uniform(20, 400 * (k + 1)), 10 + k, 16)])
            if (t - session.start_ns) % (250 * MS) == 0:
                recorder.add(collector.tick(t), session.start_ns)
    collector.end_step(t + 50 * MS)
    recorder.add(collector.tick(t + 1000 * MS), session.start_ns)
    return session


EXTRA = {
    "target": {"url": "http://x:8000", "model": "m", "sim": {"engine": "vllm"}},
    "config": {"workload": {"input_len": 64, "output_len": 16}, "plan": {"request_rate": 2.0}},
    "load": "open loop, 2 req/s (Poisson)",
}


@pytest.fixture(scope="module")
def snap_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    snap = build_snapshot(filled_session(), EXTRA, knee={"rate": 3.5})
    path = save_snapshot(tmp_path_factory.mktemp("s") / "run.json", snap)
    return snap, path


def test_round_trip_same_percentiles(snap_file: tuple[dict[str, Any], Path]) -> None:
    snap, path = snap_file
    back = load_snapshot(path)
    assert back["version"] == VERSION and back["format"] == "llmtop-snapshot"
    for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        assert back["summary"][m] == pytest.approx(snap["summary"][m], nan_ok=True)
    assert [s["ttft_ms"] for s in back["steps"]] == [s["ttft_ms"] for s in snap["steps"]]
    assert back["knee"] == {"rate": 3.5}
    assert back["engine"]["name"] == "vllm" and back["model"] == "m"
    assert back["workload"] == {"input_len": 64, "output_len": 16}
    assert back["slo"] == "ttft_p99<=500ms"


def test_histograms_decode_with_hdrhistogram_directly(
    snap_file: tuple[dict[str, Any], Path],
) -> None:
    """Any HdrHistogram library reads them: decode with hdrh itself, compare with the summary."""
    _, path = snap_file
    raw = json.loads(path.read_text())
    assert raw["histogram_unit"] == "us"
    for m in ("ttft", "tpot", "itl", "e2el"):
        h = HdrHistogram.decode(raw["histograms"][m].encode())
        assert h.get_total_count() == raw["summary"][f"{m}_ms"]["count"]
        assert h.get_value_at_percentile(99.0) / 1000 == pytest.approx(
            raw["summary"][f"{m}_ms"]["p99"]
        )
    for step in raw["steps"]:
        h = HdrHistogram.decode(step["histograms"]["ttft"].encode())
        assert h.get_value_at_percentile(99.0) / 1000 == pytest.approx(step["ttft_ms"]["p99"])
    # the two steps really differ (the second is slower), and each step's counts add up
    assert raw["steps"][1]["ttft_ms"]["p99"] > raw["steps"][0]["ttft_ms"]["p99"]
    assert sum(s["completed"] for s in raw["steps"]) == raw["summary"]["completed"] == 400


def test_interval_recorder_keeps_one_second_histograms(
    snap_file: tuple[dict[str, Any], Path],
) -> None:
    snap, _ = snap_file
    ivs = snap["intervals"]
    assert len(ivs) >= 2
    total = 0
    for iv in ivs:
        assert iv["end_s"] > iv["start_s"]
        total += HdrHistogram.decode(iv["histograms"]["ttft"].encode()).get_total_count()
    assert total == snap["summary"]["ttft_ms"]["count"]


def test_v0_layout_migrates() -> None:
    d = load_snapshot(FIXTURES / "v0-trtllm-128-128.json")
    assert d["version"] == VERSION and "migrated from snapshot format v0" in d["notes"]
    assert d["steps"][0]["offered"] == "inf" and d["steps"][0]["index"] == 0
    h = HdrHistogram.decode(d["histograms"]["ttft"].encode())
    assert h.get_value_at_percentile(99) / 1000 == pytest.approx(d["summary"]["ttft_ms"]["p99"])
    assert d["series"] and d["model"] == "llama-3-8b"


def test_committed_v1_fixture_still_loads() -> None:
    d = load_snapshot(FIXTURES / "v1-sim-vllm-128-128.json")
    assert d["engine"]["name"] == "vllm" and d["profile"]["name"] == "llama3-8b-128-128"
    assert d["summary"]["completed"] == 40


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"format": "llmtop-snapshot", "version": 1, "summ', "invalid json"),
        ("[1, 2]", "not an llmtop snapshot"),
        ('{"format": "something-else"}', "not an llmtop snapshot"),
        ('{"format": "llmtop-snapshot", "version": 99}', "newer than this llmtop"),
        ('{"format": "llmtop-snapshot", "version": "x"}', "not a version"),
        ('{"format": "llmtop-snapshot", "version": 1, "summary": []}', "'summary'"),
    ],
)
def test_corrupt_files_get_a_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SnapshotError, match="(?i)" + needle.replace("(", r"\(")) as exc:
        load_snapshot(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_corrupt_histogram_is_named(tmp_path: Path) -> None:
    d = json.loads((FIXTURES / "v1-sim-vllm-128-128.json").read_text())
    d["histograms"]["ttft"] = "HISTFAAAnot-really"
    path = tmp_path / "h.json"
    path.write_text(json.dumps(d))
    with pytest.raises(SnapshotError, match="ttft histogram is corrupt"):
        load_snapshot(path)


def test_save_is_atomic_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(SnapshotError, match="cannot write snapshot"):
        save_snapshot(target, {"format": "llmtop-snapshot"})  # a directory: rename fails
    assert list(target.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]
    out = save_snapshot(tmp_path / "new" / "s.json", {"a": float("nan"), "_path": "x"})
    assert json.loads(out.read_text()) == {"a": None}
    assert out.stat().st_mode & 0o044  # readable by others, like any file the user writes


def test_cli_missing_and_corrupt_snapshots(tmp_path: Path) -> None:
    r = run_cli("compare", str(tmp_path / "nope.json"))
    assert_one_line_error(r, "no such snapshot file")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "llmtop-snapshot", "vers')
    r = run_cli("compare", str(FIXTURES / "v1-sim-vllm-128-128.json"), str(bad))
    assert_one_line_error(r, "bad.json", "invalid json")
    r = run_cli("report", str(bad), "-o", str(tmp_path / "rep"))
    assert_one_line_error(r, "invalid json")
