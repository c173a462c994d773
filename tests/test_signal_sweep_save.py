"""A signal while a finished sweep point is being saved never costs its snapshot.

`llmtop launch` runs as a real process (its own session, as under a shell), the engine a
stand-in that serves llmtop's simulated vLLM. The window between the end of a point's load
and the rename of its snapshot is a few tens of milliseconds, too short to hit with one
well-timed signal, so the test sends a storm: SIGTERM every 2 ms from the moment the load
process is gone or the snapshot's temporary file shows up (whichever the watcher sees
first) until llmtop exits. Every offset from there on (the last metrics scrape, the
snapshot's build, its write, its fsync and rename, the engine's stop) is covered in one run,
without a test-only hook in the code: the writes are the real ones.
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

from tests.test_launch_interrupts import (
    GRACE_S,
    _all_gone,
    _engines,
    _kill_leftovers,
    _launch,
    _wait_load,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process semantics")


def _reaped(pids: list[int]) -> bool:
    """Every one of `pids` is gone, zombie included: llmtop has joined its load process.

    Not merely ended: llmtop joins the load process once it has read the load's last
    records and its stop, so from here on its channel holds nothing. (A signal in between,
    which makes llmtop send a stop to a load process that has just exited, can still cost
    the last records: `ParentChannel.send` marks the channel closed on EPIPE with unread
    messages in it, a known gap outside this test's subject.)
    """
    return not any(psutil.pid_exists(pid) for pid in pids)


def _storm(proc: subprocess.Popen[str], out_dir: Path, sig: int) -> tuple[int, bool]:
    """Wait for the end of the first point's load (its process joined), then signal llmtop
    until it exits.

    Returns (signals sent, whether a snapshot's temporary file was seen at the first one).
    """
    loads = _wait_load(proc)
    tmp_seen = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        names = os.listdir(out_dir) if out_dir.exists() else []
        tmp_seen = any(n.startswith(".vllm-") for n in names)
        if tmp_seen or _reaped(loads):
            break
        time.sleep(0.0005)
    sent = 0
    while proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            break
        sent += 1
        time.sleep(0.002)
    return sent, tmp_seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_storm_at_the_end_of_a_point_keeps_its_snapshot(sig: int, tmp_path: Path) -> None:
    proc, pid_dir = _launch(tmp_path, "max-num-seqs=8,16", "--num-requests", "24")
    out_dir = tmp_path / "out"
    engines = _engines(pid_dir, 1)
    try:
        sent, _ = _storm(proc, out_dir, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    left = _all_gone(engines, GRACE_S + 5)
    _kill_leftovers(left)
    assert not left, f"engine processes left: {left}"
    name = signal.Signals(sig).name
    assert sent > 0
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    said = [ln for ln in err.splitlines() if ln.startswith("llmtop: interrupted")]
    assert len(said) == 1 and f"by {name}" in said[0], err
    assert "point 1/2 (max-num-seqs=8)" in said[0] and "max-num-seqs=8" in said[0], said
    # the first point's load ended (or was stopped by the first signal): its snapshot is whole
    snap = json.loads((out_dir / "vllm-max-num-seqs=8.json").read_text())
    done = snap["summary"]["completed"]
    assert done == 24 or (snap["failure"] or {}).get("kind") == "interrupted", snap["failure"]
    assert snap["sweep"]["label"] == "max-num-seqs=8"
    assert not (out_dir / "vllm-max-num-seqs=16.json").exists()
    rows = json.loads((out_dir / "comparison.json").read_text())
    assert rows[0]["config"] == "max-num-seqs=8" and rows[0]["completed"] == done
    assert rows[0]["failure"] == snap["failure"]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], "a temporary file left"
