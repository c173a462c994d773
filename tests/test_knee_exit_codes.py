"""The SLO as a CI gate (issue 11): `run --slo` exits 3 when the whole-run SLO is breached,
still writing every output; 0 when it is met. `knee` exits 3 when no load met the SLO (or
one of its tiers), with the lowest load's figures written; its 0 (a knee found) and 130
(Ctrl-C) are in tests/test_knee_run.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.fault_server import FaultServer
from tests.support.processes import scripted_server_process
from tests.test_knee_run import run_knee_cli


def test_run_exits_3_when_the_slo_is_breached_and_still_writes(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    common = ["run", "--url", fault_server.url, "--request-rate", "20", "--duration", "2"]
    common += ["--input-len", "8", "--output-len", "4", "--no-progress"]
    bad = run_cli(*common, "--slo", "ttft_p99<=1us", json_path=tmp_path / "bad.json")
    assert bad.returncode == 3, bad.stderr
    assert "SLO was breached" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.data["slo"]["ok"] is False and bad.data["completed"] > 0
    good = run_cli(*common, "--slo", "ttft_p99<=10s", json_path=tmp_path / "good.json")
    assert good.returncode == 0, good.stderr
    assert good.data["slo"]["ok"] is True


# -- `llmtop knee` as a CI gate: 3 when no load met the SLO --------------------------------
SLOW_TTFT_MS = 50.0  # the scripted server's TTFT: no load, however light, answers faster


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    with scripted_server_process("--ttft-ms", f"{SLOW_TTFT_MS:g}", "--itl-ms", "5") as url:
        yield url


def _explanations(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("llmtop: no load met")]


def test_knee_exits_3_when_no_load_meets_the_slo(slow_url: str, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run_knee_cli(
        "--url",
        slow_url,
        "--slo",
        "ttft_p99<=5ms",
        "--input-len",
        "16",
        "--output-len",
        "4",
        "--start-rate",
        "4",
        "--min-step-s",
        "1",
        "--max-step",
        "3s",
        "--confirm-s",
        "3",
        json_path=tmp_path / "k.json",
        timeout=90,
    )
    took = time.monotonic() - t0
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert took < 60, took
    assert "Traceback" not in r.stderr
    (why,) = _explanations(r.stderr)  # one line says why
    assert "ttft_p99" in why and "4 req/s" in why, why
    d = r.data
    k = d["knee"]
    assert k["value"] is None and k["rate"] is None and k["first_bad"] == 4
    low = d["steps"][0]  # the lowest load's figures, written although nothing met the SLO
    assert low["value"] == 4 and low["verdict"] == "bad" and low["completed"] > 0
    assert low["ttft_ms"]["p99"] >= SLOW_TTFT_MS
    assert low["slo"][0]["limit"] == "ttft_p99<=5ms" and low["slo"][0]["ok"] is False
    assert min(s["value"] for s in d["steps"]) == 4  # never went above what already broke it
    assert "none" in r.stdout and "ttft_p99" in r.stdout  # the table still printed


def test_knee_exits_3_when_one_tier_is_never_met(slow_url: str, tmp_path: Path) -> None:
    r = run_knee_cli(
        "--url",
        slow_url,
        "--slo",
        "chat: ttft_p99<=5ms",
        "--slo",
        "batch: ttft_p50<=2s",
        "--input-len",
        "16",
        "--output-len",
        "4",
        "--start-rate",
        "5",
        "--max-rate",
        "10",
        "--min-step-s",
        "1",
        "--max-step",
        "2s",
        "--confirm-s",
        "2",
        json_path=tmp_path / "k.json",
        timeout=90,
    )
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    (why,) = _explanations(r.stderr)
    assert "ttft_p99" in why, why
    knees = {k["tier"]: k for k in r.data["knees"]}
    assert knees["chat"]["value"] is None
    assert knees["batch"]["value"] is not None  # the other tier's answer is still there
    assert r.data["knee"]["value"] is None  # the first tier's
