"""`llmtop knee` end to end: a K-slot server of known capacity, the CLI, Ctrl-C, bad input."""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, CliResult, assert_one_line_error
from tests.support.processes import scripted_server_process

# The K-slot server: K generation slots, a FIFO queue beyond them, fixed TTFT and ITL.
K = 8
TTFT_MS = 20.0
ITL_MS = 4.0
TOKENS = 10
SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000  # a slot is held 56 ms
CAPACITY = K / SERVICE_S  # 142.9 req/s
LIMIT_MS = 130.0  # TTFT p99 <= 130 ms  <=>  queue wait p99 <= 110 ms

_REGISTER = (
    "import sys\n"
    "from llmtop.cli import cli, main\n"
    "if 'knee' not in cli.commands:\n"
    "    from llmtop.cli.knee import knee_command\n"
    "    cli.add_command(knee_command, 'knee')\n"
    "sys.argv[0] = 'llmtop'\n"
    "main()\n"
)


def knee_cmd(*args: str) -> list[str]:
    """`llmtop knee ...`, registering the command if the group does not have it yet."""
    return [sys.executable, "-c", _REGISTER, "knee", *args]


def run_knee_cli(*args: str, json_path: Path | None = None, timeout: float = 150) -> CliResult:
    cmd = knee_cmd(*args) + (["--json", str(json_path)] if json_path else [])
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    return CliResult(proc, json_path)


# -- queueing theory: where the knee must land ----------------------------------------------
def mdk_wait_quantile(lam: float, k: int, s: float, q: float, n: int = 60_000) -> float:
    """Wait-time q-quantile of an M/D/K FIFO queue (simulated; exact up to sampling noise)."""
    rng = random.Random(7)
    free = [0.0] * k
    t = 0.0
    waits = []
    for _ in range(n):
        t += rng.expovariate(lam)
        f = heapq.heappop(free)
        start = max(t, f)
        waits.append(start - t)
        heapq.heappush(free, start + s)
    waits = sorted(waits[n // 10 :])
    return waits[math.ceil(q * len(waits)) - 1]


def theoretical_knee(limit_ms: float) -> float:
    """The rate at which TTFT p99 = TTFT + wait p99 reaches the limit (bisection)."""
    target = (limit_ms - TTFT_MS) / 1000
    lo, hi = 0.3 * CAPACITY, 0.999 * CAPACITY
    for _ in range(14):
        mid = (lo + hi) / 2
        if mdk_wait_quantile(mid, K, SERVICE_S, 0.99) <= target:
            lo = mid
        else:
            hi = mid
    return lo


@pytest.fixture(scope="module")
def kslot_url() -> Iterator[str]:
    args = ["--slots", str(K), "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)]
    with scripted_server_process(*args, "--tokens", str(TOKENS)) as url:
        yield url


KSLOT_ARGS = [
    "--slo",
    f"ttft_p99<={LIMIT_MS:g}ms",
    "--input-len",
    "16",
    "--output-len",
    str(TOKENS),
    "--start-rate",
    "40",
    "--step",
    "2",
    "--max-rate",
    "400",
    "--min-step-s",
    "12",
    "--max-step-s",
    "20",
    "--confirm-s",
    "30",
]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kslot_knee_matches_queueing_theory(kslot_url: str, tmp_path: Path) -> None:
    """Issue 11's bar at a scale CI affords (its full size, 3 seeds and two service times:
    benchmarks/knee_sustained.py)."""
    expected = theoretical_knee(LIMIT_MS)  # ~122 req/s, rho ~0.86
    assert 0.8 * CAPACITY < expected < 0.9 * CAPACITY
    # Interval: the bisection stops 5 % below a breach; a p99 from a few hundred samples
    # and a 2-core box's jitter move it a little either way.
    low, high = 0.82 * expected, 1.06 * expected
    r = run_knee_cli("--url", kslot_url, *KSLOT_ARGS, json_path=tmp_path / "k.json", timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    k = r.data["knee"]
    print(f"knee {k['rate']} req/s (theory {expected:.1f}), {k['confidence']}")
    assert low <= k["rate"] <= high, (k, expected, r.stdout)
    assert k["sustained"] and k["first_bad"] > k["rate"]
    assert k["request_throughput"] == pytest.approx(k["rate"], rel=0.2)
    assert k["goodput"] <= k["request_throughput"] + 1e-9


def test_json_shape_and_rate_cap(kslot_url: str, tmp_path: Path) -> None:
    snap = tmp_path / "snap.json"
    r = run_knee_cli(
        "--url",
        kslot_url,
        "--slo",
        "ttft_p99<=2s,error_rate<=1%",
        "--input-len",
        "16",
        "--output-len",
        "4",
        "--start-rate",
        "10",
        "--max-rate",
        "20",
        "--min-step-s",
        "1",
        "--max-step",
        "3s",
        "--confirm-s",
        "5",
        "--save",
        str(snap),
        json_path=tmp_path / "k.json",
    )
    assert r.returncode == 0, r.stderr
    d = r.data
    k = d["knee"]
    assert k["rate"] == 20 and k["first_bad"] is None and k["sustained"]
    assert any("at least" in n for n in k["confidence_notes"])
    for key in ("rate", "output_throughput", "goodput", "request_throughput", "confidence"):
        assert key in k
    assert d["slo"] == "ttft_p99<=2s,error_rate<=1%"
    assert {"config", "target", "steps", "plan"} <= set(d)
    assert [s["value"] for s in d["steps"]][:2] == [10, 20]
    step = d["steps"][0]
    assert step["verdict"] == "good" and step["completed"] > 0 and "ttft_ms" in step
    assert step["slo"][0]["limit"] == "ttft_p99<=2s"
    assert "knee" in r.stdout and "confidence" in r.stdout
    s = json.loads(snap.read_text())
    assert s["knee"]["rate"] == 20 and s["knee"]["steps"]  # the knee at the top (compare reads it)


def test_concurrency_search(kslot_url: str, tmp_path: Path) -> None:
    # TTFT p99 <= 30 ms. With 8 slots a 9th request in flight waits for the next free slot:
    # a whole service (56 ms) when the slots run in step, S/8 = 7 ms on average when they are
    # staggered. Measured p99: ~21 ms at c <= 8, 38-40 ms at c = 9 staggered (a 40 ms limit
    # once passed 9), 76 ms in step. 30 ms lies between with ~8 ms either side.
    r = run_knee_cli(
        "--url",
        kslot_url,
        "--slo",
        "ttft_p99<=30ms",
        "--concurrency-search",
        "--start-concurrency",
        "2",
        "--max-concurrency",
        "32",
        "--input-len",
        "16",
        "--output-len",
        str(TOKENS),
        "--min-step-s",
        "2",
        "--max-step-s",
        "5",
        "--confirm-s",
        "15",
        json_path=tmp_path / "c.json",
    )
    assert r.returncode == 0, r.stderr
    k = r.data["knee"]
    # K in flight never queue in theory, but at c = K the server has no slack at all: whether
    # a finished request's slot is free before the client's next request lands is a race on
    # loopback, so a search that demands a steady state within the SLO may stop one below K.
    assert k["concurrency"] in (K - 1, K), r.stdout
    assert k["first_bad"] is None or k["first_bad"] > k["concurrency"]
    c = k["concurrency"]
    assert k["output_throughput"] == pytest.approx(c / SERVICE_S * TOKENS, rel=0.25)


def test_ctrl_c_keeps_the_steps_so_far(kslot_url: str, tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    cmd = knee_cmd(
        "--url",
        kslot_url,
        "--slo",
        "ttft_p99<=1s",
        "--input-len",
        "16",
        "--output-len",
        "4",
        "--start-rate",
        "5",
        "--min-step-s",
        "1",
        "--json",
        str(out),
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(9)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    d = json.loads(out.read_text())
    assert d["interrupted"] is True and d["knee"]["complete"] is False
    assert d["steps"] and d["steps"][0]["verdict"] == "good"
    assert "knee" in stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--slo", "ttft_p99<=fast"], "bad SLO"),
        (["--slo", "ttft_p99<=1s", "--step", "1"], "factor"),
        (["--slo", "ttft_p99<=1s", "--start-rate", "10", "--max-rate", "5"], "--max-rate"),
        (["--slo", "ttft_p99<=1s", "--resolution", "0"], "--resolution"),
        (["--slo", "ttft_p99<=1s", "--start-rate", "inf"], "--start-rate"),
    ],
)
def test_bad_flags_are_one_line_errors(args: list[str], needle: str) -> None:
    r = run_knee_cli("--url", "http://127.0.0.1:9", *args, timeout=30)
    assert_one_line_error(r, needle)


def test_slo_is_required() -> None:
    r = run_knee_cli("--url", "http://127.0.0.1:9", timeout=30)
    assert r.returncode != 0 and "--slo" in r.stderr and "Traceback" not in r.stderr
