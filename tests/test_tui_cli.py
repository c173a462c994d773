"""The real `llmtop [URL]` command: a clean one-line error before the UI when the server is
unreachable, and the real app in a real terminal (tmux) that takes keys and exits cleanly."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.support.fault_server import FaultServer
from tests.support.tty import run_cli_tty

LLMTOP = shlex.split(os.environ.get("LLMTOP_CMD", "")) or [sys.executable, "-m", "llmtop"]


def test_unreachable_server_is_a_one_line_error_before_the_ui() -> None:
    code, screen = run_cli_tty("http://127.0.0.1:1", "--request-rate", "2", timeout=60)
    assert code != 0 and "Traceback" not in screen
    assert "cannot connect" in screen and "127.0.0.1:1" in screen, screen
    assert "\x1b[?1049h" not in screen  # the UI never took over the terminal


def test_bad_ui_flags_are_one_line_errors() -> None:
    assert_one_line_error(run_cli("--rate-step", "0", "http://x"), "rate step")
    assert_one_line_error(run_cli("--slo", "ttft<=1s", "http://x"), "statistic")
    assert_one_line_error(run_cli("--request-rate", "inf", "http://x"), "--request-rate")


class Tmux:
    """One detached tmux session running a command, with its exit code written to a file."""

    def __init__(self, tmp: Path, args: list[str], size: tuple[int, int] = (100, 30)) -> None:
        self.name = f"llmtop-test-{os.getpid()}-{time.monotonic_ns()}"
        self.rc_file = tmp / "rc"
        # Textual draws on stderr: leave it on the terminal (the epilogue lands there too)
        shell = f"cd {shlex.quote(str(ROOT))} && {shlex.join(LLMTOP + args)}"
        shell += f"; echo $? > {self.rc_file}; sleep 30"
        cmd = ["tmux", "new-session", "-d", "-s", self.name, "-x", str(size[0])]
        subprocess.run([*cmd, "-y", str(size[1]), shell], check=True)

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.25)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def exit_code(self, timeout: float = 40.0) -> int:
        deadline = time.monotonic() + timeout
        while not self.rc_file.exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert self.rc_file.exists(), f"the app did not exit; screen:\n{self.screen()}"
        return int(self.rc_file.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("target", ["sim", "fault_server"])
def test_real_terminal_takes_keys_and_exits_cleanly(tmp_path: Path, target: str) -> None:
    server = FaultServer().start() if target == "fault_server" else None
    url = [server.url] if server else []
    snap = tmp_path / "out.json"
    args = [*url, "--request-rate", "2", "--input-len", "32", "--output-len", "16"]
    args += ["--slo", "ttft_p99<=1s", "--save", str(snap)]
    tmux = Tmux(tmp_path, args)
    try:
        tmux.wait_for("measuring", timeout=90)
        tmux.keys("Up")
        tmux.wait_for("rate → 2.20 req/s")
        tmux.keys("PageUp")
        tmux.wait_for("rate → 4.40 req/s")
        tmux.keys("Space")
        tmux.wait_for("arrivals paused")
        tmux.keys("Space")
        tmux.wait_for("arrivals resumed")
        tmux.keys("?")
        tmux.wait_for("What the figures mean")
        tmux.keys("Escape")  # alone: an escape followed at once by q would read as alt+q
        time.sleep(1.0)
        tmux.keys("q")
        assert tmux.exit_code() == 0
        screen = tmux.screen()
    finally:
        tmux.close()
        if server is not None:
            server.stop()
    assert "Traceback" not in screen, screen
    assert "llmtop: snapshot saved to" in screen
    assert "requests completed" in screen
    assert "measuring" not in screen  # the alternate screen is gone: the terminal is back
    data = json.loads(snap.read_text())
    assert data["format"] == "llmtop-snapshot"
    assert [s["offered"] for s in data["steps"]][:3] == [2.0, 2.2, 4.4]
    assert data["summary"]["completed"] > 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_a_terminal_that_goes_away_stops_the_load_and_keeps_the_snapshot(tmp_path: Path) -> None:
    """Killing the terminal (a closed SSH session, a killed tmux) sends SIGHUP: the load stops,
    the snapshot is written and the process ends, although Textual cannot write any more."""
    import psutil

    snap = tmp_path / "gone.json"
    args = ["--request-rate", "2", "--input-len", "32", "--output-len", "16", "--save", str(snap)]
    tmux = Tmux(tmp_path, args)
    try:
        tmux.wait_for("measuring", timeout=90)
        time.sleep(2.0)
    finally:
        tmux.close()  # the pane's processes get SIGHUP; the terminal is gone

    def ours() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(snap) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        return found

    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.25)
    left = ours()
    for p in left:
        p.kill()
    assert not left, f"still running after the terminal went away: {left}"
    assert json.loads(snap.read_text())["summary"]["completed"] > 0
