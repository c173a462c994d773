"""Dying processes and group signals: what was measured is kept, and nothing is left behind.

`llmtop run` runs as a real subprocess in a session of its own (as under a shell, `timeout`
or a CI runner), against a real loopback server; the load process is found with psutil and
killed, the whole group is signalled, or llmtop itself is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.support.fault_server import Behaviour, FaultServer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process semantics")


def _start(tmp_path: Path, url: str | None, *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "llmtop", "run"]
    if url:
        args += ["--url", url]
    args += [
        "--duration", "60", "--request-rate", "20", "--input-len", "8", "--output-len", "40",
        "--json", str(tmp_path / "out.json"), "--save", str(tmp_path / "snap.json"),
        "--no-progress", *extra,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own group, like a job under a shell
    )


def _load_process(proc: subprocess.Popen[str], timeout_s: float = 30.0) -> psutil.Process:
    """The spawned load process (multiprocessing's child of llmtop), once it runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError("no load process appeared")


def _wait_requests(tmp_path: Path, proc: subprocess.Popen[str], seconds: float = 3.0) -> None:
    _load_process(proc)
    time.sleep(seconds)  # some requests complete
    assert proc.poll() is None, proc.communicate()


def test_a_killed_load_process_is_reported_and_what_was_measured_is_kept(tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour(itl_s=0.01)) as srv:
        proc = _start(tmp_path, srv.url)
        _wait_requests(tmp_path, proc)
        _load_process(proc).kill()
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - killed_at
    assert proc.returncode not in (0, None)
    assert took < 2.0, f"llmtop took {took:.1f} s to notice"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == "llmtop: the load process was killed by SIGKILL", err
    assert "Traceback" not in err
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["failure"]["kind"] == "load_process_died"
    assert data["failure"]["signal"] == "SIGKILL" and data["failure"]["exit_code"] == -9
    assert data["completed"] > 0  # what was measured before is kept
    snap = json.loads((tmp_path / "snap.json").read_text())
    assert snap["failure"]["signal"] == "SIGKILL"
    assert snap["summary"]["completed"] == data["completed"]
    assert "TTFT" in out  # the table is printed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_the_whole_group_stops_the_run_cleanly(sig: int, tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour(itl_s=0.01)) as srv:
        proc = _start(tmp_path, srv.url)
        _wait_requests(tmp_path, proc)
        load = _load_process(proc)
        os.killpg(proc.pid, sig)  # reaches llmtop and the load process alike
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ended unexpectedly" not in err
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["interrupted"] is True and data["stop_reason"] == "stopped"
    assert data["failure"] == {
        "kind": "interrupted",
        "signal": signal.Signals(sig).name,
        "message": f"stopped by {signal.Signals(sig).name}; requests in flight were cancelled",
    }
    assert data["completed"] >= 10 and data["failed"] == 0
    assert not load.is_running() or load.status() == psutil.STATUS_ZOMBIE
    assert "TTFT" in out


def _gone(pids: list[int], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_children_die_with_a_sigkilled_llmtop(tmp_path: Path) -> None:
    """No --url: llmtop starts the simulator and the load process; kill -9 llmtop."""
    proc = _start(tmp_path, None)
    load = _load_process(proc, timeout_s=60)
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    sims = [
        c.pid for c in psutil.Process(proc.pid).children() if "llmtop.sim" in " ".join(c.cmdline())
    ]
    assert sims and load.pid in children
    time.sleep(1.0)
    proc.kill()
    proc.communicate(timeout=10)
    assert _gone([load.pid], 2.0), "the load process outlived llmtop"
    assert _gone(sims, 5.0 + 5.0), "the simulator outlived llmtop"
