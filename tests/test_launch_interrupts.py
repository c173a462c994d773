"""`llmtop launch` never leaves an engine running: interrupted during the health wait, during
the load and between sweep points, by SIGINT, SIGTERM, SIGHUP, or a SIGKILL of llmtop itself.

The engine is a stand-in given as `--engine-python`: it writes its pid and its worker's pid
into a folder, starts a worker in its own process group (as vLLM's engine core or trtllm's
MPI ranks do), and then, depending on `--max-num-seqs`, never becomes healthy (1), never
becomes healthy and ignores SIGTERM (2), serves as llmtop's simulated vLLM and ignores
SIGTERM (3: its stop takes the whole grace period), or serves as the simulated vLLM (any
other).
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

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process semantics")
GRACE_S = 3.0

_ENGINE = r"""
import os, signal, subprocess, sys, time
args = sys.argv[1:]
assert args[:2] == ["-m", "vllm.entrypoints.openai.api_server"], args
args = args[2:]
seqs = args[args.index("--max-num-seqs") + 1] if "--max-num-seqs" in args else "8"
pids = os.environ["FAKE_ENGINE_PIDS"]
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.path.join(pids, f"engine-{os.getpid()}"), "w") as f:
    f.write(f"{os.getpid()} {worker.pid}\n")
if seqs in ("1", "2"):
    if seqs == "2":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("loading weights (forever)", flush=True)
    while True:
        time.sleep(1)
os.environ["PYTHONPATH"] = ROOT
if seqs == "3":  # the simulator serves from a child; this process outlives SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    subprocess.run([sys.executable, "-m", "llmtop.sim", *args])
    while True:
        time.sleep(1)
os.execv(sys.executable, [sys.executable, "-m", "llmtop.sim", *args])
"""


def _engine_python(tmp_path: Path) -> str:
    path = tmp_path / "engine-python"
    path.write_text(f"#!{sys.executable}\nROOT = {str(ROOT)!r}\n" + _ENGINE)
    path.chmod(0o755)
    return str(path)


def _launch(
    tmp_path: Path, sweep: str, *load: str, grace_s: float = GRACE_S
) -> tuple[subprocess.Popen[str], Path]:
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    args = [
        sys.executable, "-m", "llmtop", "launch", "vllm",
        "--engine-python", _engine_python(tmp_path),
        "--engine-env", f"FAKE_ENGINE_PIDS={pids}",
        "--sweep", sweep, "--out", str(tmp_path / "out"),
        "--health-timeout", "120", "--stop-grace", f"{grace_s:g}", "--no-progress",
        "--input-len", "16", "--output-len", "16", *load,
        "--", "--model", "llama-3.2-1b",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own group, as a job under a shell
    )
    return proc, pids


def _engines(pids: Path, n: int, timeout_s: float = 60.0) -> list[int]:
    """The pids (engine and worker) of the first `n` engines, once they have started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = sorted(pids.glob("engine-*"), key=lambda p: p.stat().st_mtime)
        if len(files) >= n and all(f.read_text().endswith("\n") for f in files):
            return [int(x) for f in files[:n] for x in f.read_text().split()]
        time.sleep(0.1)
    raise AssertionError(f"{n} engine(s) did not start")


def _all_gone(pids: list[int], within_s: float) -> list[int]:
    """The pids still running (not zombies) after `within_s`; [] when all are gone."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _said(err: str, sig: str) -> str:
    """The one line an interrupted launch ends with (and no other interrupt line)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(("llmtop: interrupted", "llmtop: ab"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"llmtop: interrupted by {sig} during "), lines
    return lines[0]


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupted_during_the_health_wait(sig: int, tmp_path: Path) -> None:
    proc, pid_dir = _launch(tmp_path, "max-num-seqs=1", "--num-requests", "4")
    engine = _engines(pid_dir, 1)
    time.sleep(0.5)
    os.killpg(proc.pid, sig)  # Ctrl-C reaches the foreground group: llmtop, not the engine
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=30)
    left = _all_gone(engine, GRACE_S + 5 - (time.monotonic() - t0))
    _kill_leftovers(left)
    assert not left, f"engine processes left: {left}"
    assert proc.returncode == 130, err
    line = _said(err, signal.Signals(sig).name)
    assert "sweep point 1/1 (max-num-seqs=1), in its engine's health wait" in line
    assert line.endswith(f"no point was measured; the engine logs are in {tmp_path / 'out'}")
    assert not (tmp_path / "out" / "comparison.json").exists()


@pytest.mark.parametrize("stubborn", [False, True])
def test_a_sigkilled_llmtop_leaves_no_engine(stubborn: bool, tmp_path: Path) -> None:
    """The watchdog stops the engine's group: SIGTERM, then SIGKILL after the grace."""
    proc, pid_dir = _launch(tmp_path, f"max-num-seqs={2 if stubborn else 1}", "--num-requests", "4")
    engine = _engines(pid_dir, 1)
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=10)
    left = _all_gone(engine, GRACE_S + 5)
    _kill_leftovers(left)
    assert not left, f"engine processes left after llmtop was killed: {left}"


def _load_children(proc: subprocess.Popen[str]) -> list[int]:
    return [
        c.pid for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())
    ]


def _wait_load(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        loads = _load_children(proc)
        if loads:
            return loads
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("the load never started")


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_interrupted_during_the_load(how: str, tmp_path: Path) -> None:
    proc, pid_dir = _launch(tmp_path, "max-num-seqs=8", "--duration", "60", "--request-rate", "5")
    engine = _engines(pid_dir, 1)
    loads = _wait_load(proc)
    time.sleep(2.0)
    if how == "SIGKILL":
        proc.kill()
    else:
        os.killpg(proc.pid, getattr(signal, how))
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    left = _all_gone(engine + loads, GRACE_S + 5 - (time.monotonic() - t0))
    _kill_leftovers(left)
    assert not left, f"processes left: {left}"
    if how != "SIGKILL":
        assert proc.returncode == 130, err
        out_dir = tmp_path / "out"
        assert _said(err, how).endswith(
            "during sweep point 1/1 (max-num-seqs=8), in its load; kept in "
            f"{out_dir}: vllm-max-num-seqs=8.json and comparison.json"
        )
        snap = json.loads((out_dir / "vllm-max-num-seqs=8.json").read_text())
        assert snap["failure"]["kind"] == "interrupted"  # the point ran and is saved
        assert snap["failure"]["signal"] == how
        assert snap["summary"]["completed"] > 0
        assert snap["sweep"]["argv"]
        rows = json.loads((out_dir / "comparison.json").read_text())
        assert [r["config"] for r in rows] == ["max-num-seqs=8"]
        assert rows[0]["failure"] == snap["failure"] and not rows[0]["error"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupted_between_sweep_points(sig: int, tmp_path: Path) -> None:
    """Point 1 runs to its end; a signal while point 2's engine is starting."""
    proc, pid_dir = _launch(tmp_path, "max-num-seqs=8,1", "--num-requests", "8")
    engines = _engines(pid_dir, 2, timeout_s=120)
    time.sleep(0.5)
    os.killpg(proc.pid, sig)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    left = _all_gone(engines, GRACE_S + 5 - (time.monotonic() - t0))
    _kill_leftovers(left)
    assert not left, f"engine processes left: {left}"
    assert proc.returncode == 130, err
    out_dir = tmp_path / "out"
    assert (out_dir / "vllm-max-num-seqs=8.json").exists()  # the finished point keeps its file
    assert not (out_dir / "vllm-max-num-seqs=1.json").exists()
    name = signal.Signals(sig).name
    assert _said(err, name).endswith(
        "during sweep point 2/2 (max-num-seqs=1), in its engine's health wait; kept in "
        f"{out_dir}: vllm-max-num-seqs=8.json and comparison.json"
    )
    rows = json.loads((out_dir / "comparison.json").read_text())
    assert [r["config"] for r in rows] == ["max-num-seqs=8", "max-num-seqs=1"]
    assert rows[0]["completed"] == 8 and rows[0]["failure"] is None
    # the point that was cut says so, in the file and in the table
    assert rows[1]["failure"]["kind"] == "interrupted" and rows[1]["failure"]["signal"] == name
    assert rows[1]["error"] == rows[1]["failure"]["message"]
    assert "comparison" in out and f"failed: interrupted by {name}" in out
    logs = sorted(p.name for p in out_dir.glob("*.log"))
    assert logs == ["vllm-max-num-seqs=1.log", "vllm-max-num-seqs=8.log"]
    assert "loading weights" in (out_dir / "vllm-max-num-seqs=1.log").read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupted_while_an_engine_stops(sig: int, tmp_path: Path) -> None:
    """Point 1's engine ignores SIGTERM, so its stop takes the grace period: a signal then
    cuts the grace short (SIGKILL at once) and ends the sweep; point 2 never starts."""
    grace_s = 12.0  # long, so that waiting it out cannot pass for cutting it short
    proc, pid_dir = _launch(tmp_path, "max-num-seqs=3,8", "--num-requests", "8", grace_s=grace_s)
    engine = _engines(pid_dir, 1)
    out_dir = tmp_path / "out"
    deadline = time.monotonic() + 60
    while not (out_dir / "vllm-max-num-seqs=3.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.5)  # the engine has its SIGTERM and ignores it: llmtop waits out the grace
    os.killpg(proc.pid, sig)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    left = _all_gone(engine, 5.0)
    _kill_leftovers(left)
    assert not left, f"engine processes left: {left}"
    assert proc.returncode == 130, err
    assert took < grace_s / 2, f"the rest of the grace period was waited out ({took:.1f} s)"
    assert _said(err, signal.Signals(sig).name).endswith(
        "during sweep point 1/2 (max-num-seqs=3), as its engine was stopped; kept in "
        f"{out_dir}: vllm-max-num-seqs=3.json and comparison.json"
    )
    assert len(list(pid_dir.glob("engine-*"))) == 1, "point 2's engine was started"
    rows = json.loads((out_dir / "comparison.json").read_text())
    assert [r["config"] for r in rows] == ["max-num-seqs=3"] and rows[0]["completed"] == 8


def test_a_launch_that_fails_at_once_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "llmtop", "launch", "vllm",
         "--engine-python", str(tmp_path / "no-such-python"), "--out", str(out),
         "--", "--model", "m"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and "no such file" in proc.stderr
    assert not out.exists()
