"""A widget that raises must never leave the load running unseen: the load (and its process)
stops, what it measured is kept (the --save snapshot, as on q), and the real command leaves
the terminal restored with one line and a non-zero exit. The failure is injected into a real
widget; the load runs against a real loopback server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import textwrap
import time
from pathlib import Path

import pytest

from llmtop.cli.options import prepared
from llmtop.session import LoadSession
from llmtop.tui.app import create_app
from llmtop.tui.model import RunInfo
from llmtop.tui.widgets.throughput import ThroughputPanel
from llmtop.tui.worker import SessionDriver
from tests.support.fault_server import FaultServer
from tests.support.tty import run_cli_tty
from tests.test_tui import SLO, options, wait_for


def test_a_widget_exception_stops_the_load_and_keeps_the_run(
    fault_server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = tmp_path / "run.json"
    with prepared(options(fault_server.url, request_rate=8.0)) as prep:
        info = RunInfo.from_extra(prep.extra, prep.config.plan, SLO)
        driver = SessionDriver(
            lambda: LoadSession(prep.config, SLO, interval_s=0.1), {}, save_path=str(snap)
        )
        driver.start()
        app = create_app(info, driver)

        def broken(self: ThroughputPanel) -> None:
            raise RuntimeError("the throughput panel broke")

        async def scenario() -> None:
            async with app.run_test() as pilot:
                await wait_for(pilot, lambda: bool(app.telemetry and app.telemetry.completed > 3))
                monkeypatch.setattr(ThroughputPanel, "render", broken)
                app.main.query_one(ThroughputPanel).refresh()
                deadline = time.monotonic() + 10
                while app.is_running and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)

        with pytest.raises(RuntimeError, match="the throughput panel broke"):
            asyncio.run(scenario())  # the pilot hands the app's exception on
        assert driver.done.wait(20), "the load was left running"
    assert app.return_code == 1
    assert app.crashed == "RuntimeError: the throughput panel broke"
    assert not driver.session.process.alive
    data = json.loads(snap.read_text())  # the measurements so far, written as on q
    assert data["summary"]["completed"] > 0
    arrived = len(fault_server.requests)
    time.sleep(0.5)
    assert len(fault_server.requests) == arrived  # nothing sends any more


_BREAK_AND_RUN = textwrap.dedent(
    """
    import os, sys
    from llmtop.tui.widgets.gauge import LatencyGauge
    real = LatencyGauge.render
    calls = [0]

    def render(self):
        calls[0] += 1
        if calls[0] > int(os.environ["BREAK_AFTER"]):  # draws before it breaks
            raise ValueError("gauge exploded")
        return real(self)

    LatencyGauge.render = render
    from llmtop.cli import main
    sys.argv[0] = "llmtop"
    main()
    """
)


def run_tty(args: list[str], break_after: int, timeout: float = 90.0) -> tuple[int, str]:
    """(exit code, all the terminal got) of `python -c ...` on a pseudo-terminal."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["BREAK_AFTER"] = str(break_after)
    return run_cli_tty(*args, timeout=timeout, env=env, entry=("-c", _BREAK_AND_RUN))


@pytest.mark.slow
@pytest.mark.parametrize("break_after", [0, 40], ids=["at-the-first-draw", "mid-run"])
def test_the_command_leaves_with_one_line_and_a_nonzero_exit(
    fault_server: FaultServer, tmp_path: Path, break_after: int
) -> None:
    snap = tmp_path / "out.json"
    args = [fault_server.url, "--request-rate", "4", "--output-len", "4", "--save", str(snap)]
    code, screen = run_tty(args, break_after)
    assert code == 1, screen
    assert "Traceback" not in screen and "gauge exploded" in screen
    after = screen.rsplit("\x1b[?1049l", 1)  # what was written once the terminal was back
    assert len(after) == 2, "the alternate screen was never left"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", after[1])  # the terminal's mode resets
    lines = [x for x in text.replace("\r", "").splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmtop: the UI failed"), lines
    assert "ValueError: gauge exploded" in lines[0] and "the load was stopped" in lines[0]
    assert f"snapshot saved to {snap}" in lines[0]
    assert json.loads(snap.read_text())["format"] == "llmtop-snapshot"  # kept, as on q
    arrived = len(fault_server.requests)
    time.sleep(0.5)
    assert len(fault_server.requests) == arrived  # no load process is left sending


def test_an_app_that_never_started_its_worker_still_stops_the_load(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    """The load process starts before the app; if the app dies before its worker begins,
    `abandon()` (what `llmtop` calls on the way out) stops it and keeps what it measured."""
    snap = tmp_path / "run.json"
    with prepared(options(fault_server.url, request_rate=8.0)) as prep:
        driver = SessionDriver(
            lambda: LoadSession(prep.config, SLO, interval_s=0.1), {}, save_path=str(snap)
        )
        driver.start()
        deadline = time.monotonic() + 15
        while len(fault_server.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.session.process.alive and not driver.ran.is_set()
        driver.abandon()
    assert driver.done.is_set() and not driver.session.process.alive
    assert json.loads(snap.read_text())["format"] == "llmtop-snapshot"
    arrived = len(fault_server.requests)
    time.sleep(0.5)
    assert len(fault_server.requests) == arrived
