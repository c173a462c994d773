"""Outputs that cannot be written: a one-line error before the load, or every other output
written and the table printed (issue 12).

A read-only folder is made read-only for real: when the tests run as root (which writes
anywhere), llmtop runs without CAP_DAC_OVERRIDE (dropped from the bounding set before exec).
A full disk is /dev/full: every write to it fails with ENOSPC, the first one mid-run for
`--save-requests` (its buffer fills after a few hundred requests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.fault_server import Behaviour, FaultServer

FULL = Path("/dev/full")
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


# A tiny launcher that gives up the override before it becomes llmtop (exec).
_WITHOUT_OVERRIDE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"for cap in ({_CAP_DAC_OVERRIDE}, {_CAP_DAC_READ_SEARCH}):\n"
    f"    libc.prctl({_PR_CAPBSET_DROP}, cap, 0, 0, 0)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def _llmtop(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    cmd = [sys.executable, "-m", "llmtop", *args]
    if os.geteuid() == 0:
        cmd = [sys.executable, "-c", _WITHOUT_OVERRIDE, *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _read_only_dir(tmp_path: Path) -> Path:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


FAST = ("--input-len", "8", "--output-len", "4", "--no-progress")


@pytest.mark.parametrize("flag", ["--json", "--save", "--save-requests"])
def test_a_read_only_folder_is_refused_before_the_load(flag: str, tmp_path: Path) -> None:
    ro = _read_only_dir(tmp_path)
    with FaultServer() as srv:
        r = _llmtop("run", "--url", srv.url, "--num-requests", "5", *FAST, flag, str(ro / "x"))
        seen = list(srv.requests)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"llmtop: cannot write {flag} {ro / 'x'}: Permission denied"], r.stderr
    assert seen == []  # the server was not even asked
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full")
def test_a_full_disk_for_json_costs_neither_the_snapshot_nor_the_table(tmp_path: Path) -> None:
    with FaultServer() as srv:
        r = _llmtop(
            "run", "--url", srv.url, "--num-requests", "20", *FAST,
            "--json", str(FULL), "--save", str(tmp_path / "snap.json"),
        )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "TTFT" in r.stdout and "snapshot" in r.stdout  # the table, and the snapshot's line
    snap = json.loads((tmp_path / "snap.json").read_text())
    assert snap["summary"]["completed"] == 20
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert last == f"llmtop: cannot write --json {FULL}: No space left on device"
    assert FULL.exists() and not FULL.is_file()  # written in place, never replaced


@pytest.mark.skipif(not FULL.exists(), reason="no /dev/full")
def test_enospc_during_save_requests_loses_nothing_else(tmp_path: Path) -> None:
    n = 600  # ~350 bytes a row: the 64 KB buffer fills, and fails, mid-run
    with FaultServer(plan=lambda i, b: Behaviour(ttft_s=0.001, itl_s=0.0005)) as srv:
        r = _llmtop(
            "run", "--url", srv.url, "--num-requests", str(n), "--concurrency", "16", *FAST,
            "--save-requests", str(FULL),
            "--json", str(tmp_path / "out.json"), "--save", str(tmp_path / "snap.json"),
        )  # fmt: skip
    assert r.returncode == 1, r.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["completed"] == n and data["failed"] == 0  # the run went on to its end
    assert json.loads((tmp_path / "snap.json").read_text())["summary"]["completed"] == n
    assert "TTFT" in r.stdout
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith(f"llmtop: cannot write --save-requests {FULL}: No space left")
    assert "the other outputs were written" in last


def test_launch_out_in_a_read_only_folder_starts_no_engine(tmp_path: Path) -> None:
    ro = _read_only_dir(tmp_path)
    marker = tmp_path / "engine-started"
    engine = tmp_path / "engine-python"
    engine.write_text(f"#!{sys.executable}\nopen({str(marker)!r}, 'w').close()\n")
    engine.chmod(0o755)
    r = _llmtop(
        "launch", "vllm", "--engine-python", str(engine), "--out", str(ro / "sweep"),
        "--", "--model", "m",
    )  # fmt: skip
    assert r.returncode != 0
    assert "cannot create --out" in r.stderr and "Permission denied" in r.stderr
    assert not marker.exists()
