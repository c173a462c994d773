"""`llmtop run --repeat N` (issue 11): the statistics on known inputs, and N real runs
against the scripted server on loopback, Ctrl-C and bad input included."""

from __future__ import annotations

import http.client
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmtop.cli.repeat import ESTIMATORS, wait_drained
from llmtop.engines.detect import detect_engine
from llmtop.knee.stats import binom_cdf, quantile_ci_ranks
from llmtop.metrics.collector import Collector, Counts
from llmtop.metrics.figures import Figures, run_figures
from llmtop.metrics.hdr import new_histogram, record_many
from llmtop.metrics.repeats import (
    FIGURES,
    MAX_EXACT_RANKS,
    PooledCollector,
    RunResult,
    order_ranks,
    repeats_block,
)
from llmtop.metrics.turns import TurnFigures
from llmtop.session import Interrupts
from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.support.fault_server import FaultServer
from tests.support.scripted_server import Script, ScriptedServer

FAST = ["--input-len", "16", "--output-len", "8"]
T_975_4 = 2.776445  # Student t, 97.5 % point, 4 degrees of freedom (any t table)


def _run(index: int, value: float, complete: bool = True) -> RunResult:
    return RunResult(index, dict.fromkeys(FIGURES, value), 10, 0, 1.0, complete)


def _histogram_1_to_1000_us() -> Figures:
    h = new_histogram()
    record_many(h, np.arange(1, 1001, dtype=np.int64))  # exact below 2048 µs at 3 figures
    return Figures({"ttft": h}, Counts(completed=1000), 10.0)


# -- statistics (pure) --------------------------------------------------------------------
def test_student_t_interval_across_runs_on_known_values() -> None:
    runs = [_run(i + 1, v) for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 5.0])]
    block = repeats_block(runs, _histogram_1_to_1000_us(), 5, ESTIMATORS)
    f = block["figures"]["ttft_p50"]
    half = T_975_4 * math.sqrt(2.5) / math.sqrt(5)  # sample sd of 1..5 is sqrt(2.5)
    assert f["values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert f["mean"] == pytest.approx(3.0)
    assert f["ci95"] == pytest.approx([3.0 - half, 3.0 + half], rel=1e-5)
    assert block["n"] == 5 and block["requested"] == 5 and len(block["runs"]) == 5
    assert f["label"] == "TTFT p50" and f["unit"] == "ms"


def test_pooled_percentile_interval_from_order_statistics() -> None:
    """1..1000 µs once each: the median's 95 % interval is the 469th..532nd values (the
    binomial(1000, 0.5) ranks), read straight out of the histogram."""
    block = repeats_block([_run(1, 1.0)], _histogram_1_to_1000_us(), 1, ESTIMATORS)
    f = block["figures"]["ttft_p50"]
    assert f["pooled"] == pytest.approx(0.5)
    assert quantile_ci_ranks(1000, 0.5) == (469, 532)
    assert f["pooled_ci95"] == pytest.approx([0.469, 0.532])
    # p99 of 1000: ranks 983..997 (an upper bound exists from ~300 samples on)
    assert block["figures"]["ttft_p99"]["pooled_ci95"] == pytest.approx([0.983, 0.997])
    # one run: no interval across runs; no percentile interval for a rate
    assert f["ci95"] == [None, None] or all(math.isnan(v) for v in f["ci95"])
    assert all(math.isnan(v) for v in block["figures"]["request_throughput"]["pooled_ci95"])


def test_partial_runs_are_pooled_but_not_compared() -> None:
    runs = [_run(1, 2.0), _run(2, 4.0), _run(3, 100.0, complete=False)]
    block = repeats_block(runs, _histogram_1_to_1000_us(), 5, ESTIMATORS)
    assert block["n"] == 2 and block["requested"] == 5 and len(block["runs"]) == 3
    assert block["figures"]["e2el_p99"]["values"] == [2.0, 4.0]
    assert block["figures"]["e2el_p99"]["mean"] == pytest.approx(3.0)


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_large_samples_use_the_normal_approximation_of_the_same_ranks(q: float) -> None:
    n = MAX_EXACT_RANKS + 1000
    exact_lo, exact_hi = quantile_ci_ranks(n, q)
    lo, hi = order_ranks(n, q, ESTIMATORS)
    assert lo is not None and hi is not None and exact_lo is not None and exact_hi is not None
    assert abs(lo - exact_lo) <= 1 and abs(hi - exact_hi) <= 1
    # and it covers: P(X_(lo) <= true q-quantile <= X_(hi)) = P(lo <= Bin(n, q) < hi)
    assert binom_cdf(hi - 1, n, q) - binom_cdf(lo - 1, n, q) >= 0.95
    assert order_ranks(100, 0.5, ESTIMATORS) == quantile_ci_ranks(100, 0.5)


def test_pooled_collector_adds_runs_exactly() -> None:
    runs = []
    for k, (values, secs) in enumerate([([100, 200, 300], 2.0), ([400, 500], 3.0)]):
        c = Collector()
        record_many(c.cumulative["ttft"], np.array(values, dtype=np.int64))
        c.counts.completed = len(values)
        c.counts.failed = k
        c.counts.errors["http_500"] = k
        c.measure_from_ns = 10_000_000_000 * (k + 1)
        c.last_end_ns = c.measure_from_ns + round(secs * 1e9)
        c.begin_step(c.measure_from_ns, 5.0)
        c.turns.by_turn[1] = TurnFigures(completed=len(values), prompt_tokens=10)
        record_many(c.turns.by_turn[1].histograms["ttft"], np.array(values, dtype=np.int64))
        runs.append(c)
    pooled = PooledCollector()
    for k, c in enumerate(runs):
        pooled.add_run(c, f"run {k + 1}")
    f = run_figures(pooled)
    assert f.duration_s == pytest.approx(5.0)  # load time only: not the gap between runs
    assert f.counts.completed == 5 and f.counts.failed == 1 and f.counts.errors["http_500"] == 1
    assert f.histograms["ttft"].get_total_count() == 5
    assert f.value_ms("ttft", "p50") == pytest.approx(0.3)
    assert [s.label for s in pooled.steps] == ["run 1", "run 2"]
    assert [s.counts.completed for s in pooled.steps] == [3, 2]
    assert pooled.steps[1].histogram("ttft").get_total_count() == 2
    assert pooled.steps[0].duration_s() == pytest.approx(2.0)
    turn = pooled.turns.by_turn[1]  # conversation turns pool too
    assert turn.completed == 5 and turn.prompt_tokens == 20
    assert turn.histograms["ttft"].get_total_count() == 5


# -- end to end -----------------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer(Script(ttft_ms=20, itl_ms=4)).start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()


def test_repeat_three_runs_json_table_snapshot_and_slo(
    server: ScriptedServer, tmp_path: Path
) -> None:
    snap = tmp_path / "snap.json"
    r = run_cli(
        "run",
        "--url",
        server.url,
        "--repeat",
        "3",
        "--num-requests",
        "15",
        "--request-rate",
        "30",
        *FAST,
        "--slo",
        "ttft_p99<=1ms",  # the server waits 20 ms before the first token: breached
        "--save",
        str(snap),
        "--save-requests",
        str(tmp_path / "requests.jsonl"),
        json_path=tmp_path / "o.json",
    )
    assert r.returncode == 3, r.stderr  # the pooled whole-run SLO, as for one run
    d = r.data
    rep = d["repeats"]
    assert rep["n"] == 3 and rep["requested"] == 3
    assert [x["run"] for x in rep["runs"]] == [1, 2, 3]
    assert all(x["complete"] for x in rep["runs"])
    # the top level is every request of every run
    assert sum(x["completed"] for x in rep["runs"]) == d["completed"] == 45
    assert d["output_tokens"] == 45 * 8
    assert d["ttft_ms"]["count"] == 45
    assert d["duration_s"] == pytest.approx(sum(x["duration_s"] for x in rep["runs"]), rel=1e-6)
    assert d["slo"]["ok"] is False
    # the load processes' own figures: every run's (a fresh load process each run)
    assert all(x["load_cpu_s"] > 0 for x in rep["runs"])
    assert d["load_cpu_s"] == pytest.approx(sum(x["load_cpu_s"] for x in rep["runs"]))
    # 8 tokens 4 ms apart: ~9 reads a request, so only every run's stamps reach 180
    assert sum(d["receive_stamps"].values()) >= 45 * 4
    assert set(rep["figures"]) == set(FIGURES)
    for name, f in rep["figures"].items():
        assert len(f["values"]) == 3, name
        lo, hi = f["ci95"]
        assert lo <= f["mean"] <= hi, name
        assert f["mean"] == pytest.approx(sum(f["values"]) / 3), name
    ttft = rep["figures"]["ttft_p50"]
    assert ttft["pooled"] == d["ttft_ms"]["p50"]
    assert ttft["pooled_ci95"][0] <= ttft["pooled"] <= ttft["pooled_ci95"][1]
    assert ttft["mean"] >= 20.0  # the script's TTFT
    # the table: the pooled figures, then the runs
    assert "repeats     3 of 3 runs" in r.stdout and "95% CI (runs)" in r.stdout
    assert "TTFT p99 (ms)" in r.stdout and "run 3:" in r.stdout
    # between runs: drained on the server's own gauges; the cache reset said it could not
    assert "server drained" in r.stderr and "prefix cache not reset" in r.stderr
    # the snapshot: pooled histograms, one step per run, the repeats in its summary
    s = json.loads(snap.read_text())
    assert [st["label"] for st in s["steps"]] == ["run 1", "run 2", "run 3"]
    assert [st["completed"] for st in s["steps"]] == [15, 15, 15]
    assert s["summary"]["repeats"]["n"] == 3 and s["summary"]["completed"] == 45
    # --save-requests: every run's requests, `step` being the run (0-based)
    rows = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert sorted(Counter(row["step"] for row in rows).items()) == [(0, 15), (1, 15), (2, 15)]


def test_every_run_sends_the_same_workload(fault_server: FaultServer, tmp_path: Path) -> None:
    """Same seed, same schedule and prompts: the spread between runs is the server's."""
    r = run_cli(
        "run",
        "--url",
        fault_server.url,
        "--repeat",
        "2",
        "--num-requests",
        "6",
        "--request-rate",
        "50",
        *FAST,
        json_path=tmp_path / "o.json",
    )
    assert r.returncode == 0, r.stderr
    sent = [tuple(b["prompt"]) for b in fault_server.requests if b.get("stream")][-12:]
    assert len(sent) == 12 and len(set(sent)) == 6  # (before them: the preflight's probe)
    assert sorted(sent[:6]) == sorted(sent[6:])


def test_drain_waits_for_the_servers_running_gauge() -> None:
    """A request of someone's still streaming: the wait sees it on /metrics, gives up at its
    timeout with a note, and reads "drained" once it ended."""
    with ScriptedServer(Script(ttft_ms=10, itl_ms=20)) as srv:
        engine = detect_engine(srv.url, {})
        host, port = srv.url.removeprefix("http://").split(":")
        body = {"model": "scripted", "prompt": [1, 2, 3], "max_tokens": 60, "stream": True}

        def stream() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request(
                "POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"}
            )
            conn.getresponse().read()
            conn.close()

        sender = threading.Thread(target=stream)
        sender.start()
        try:
            time.sleep(0.2)  # the stream takes ~1.2 s
            busy = wait_drained(engine, {}, Interrupts(), timeout_s=0.3, poll_s=0.05)
        finally:
            sender.join(30)
        assert "still had 1 running and 0 waiting" in busy
        assert wait_drained(engine, {}, Interrupts(), timeout_s=5).startswith("server drained")


def test_ctrl_c_in_a_repeat_keeps_the_runs_so_far(server: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "llmtop", "run", "--url", server.url, "--repeat", "3"),
            *("--duration", "2", "--request-rate", "20", *FAST, "--json", str(out)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "run 1/3" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    time.sleep(1.0)  # into run 2
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    d = json.loads(out.read_text())
    rep = d["repeats"]
    assert d["interrupted"] is True
    assert [x["complete"] for x in rep["runs"]] == [True, False]
    assert rep["n"] == 1 and rep["requested"] == 3
    assert rep["runs"][1]["completed"] >= 1  # run 2's part is kept
    assert d["completed"] == sum(x["completed"] for x in rep["runs"])
    assert "(partial" in stdout


@pytest.mark.parametrize(
    ("value", "needle"),
    [("0", "--repeat must be between 1 and 100"), ("101", "got 101"), ("many", "'many'")],
)
def test_bad_repeat_is_one_line(value: str, needle: str) -> None:
    r = run_cli("run", "--url", "http://127.0.0.1:9", "--repeat", value)
    assert_one_line_error(r, needle)
    assert len([x for x in r.stderr.splitlines() if x.strip()]) == 1
