"""The `a` key's whole knee search, to its end, in the live UI: closed loop (the concurrency)
and open loop (the rate), against the scripted K-slot server. Short step and confirmation
knobs (what `llmtop --min-step-s/--max-step/--confirm-s/--budget` pass) keep it CI-sized;
the search is the same state machine as `llmtop knee`."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from llmtop.cli.options import prepared
from llmtop.session import LoadSession
from llmtop.slo import Slo
from llmtop.tui.app import create_app
from llmtop.tui.messages import KneeReported
from llmtop.tui.model import RunInfo
from llmtop.tui.widgets.knee_curve import KneeCurve
from llmtop.tui.widgets.timeseries import LatencyChart
from llmtop.tui.worker import SessionDriver
from tests.support.processes import scripted_server_process
from tests.test_tui import options, wait_for

K = 4  # generation slots; requests beyond wait in a FIFO queue
TTFT_MS, ITL_MS, TOKENS = 50.0, 10.0, 6
SERVICE_S = (TTFT_MS + (TOKENS - 1) * ITL_MS) / 1000  # a slot is held 100 ms
KNOBS = {"min_step_s": 1.0, "max_step_s": 3.0, "confirm_s": 3.0, "budget_s": 120.0}


@pytest.fixture
def kslot() -> Iterator[str]:
    """The server in its own process: in this one it would share the GIL with the UI."""
    args = ["--slots", str(K), "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)]
    with scripted_server_process(*args, "--tokens", str(TOKENS)) as url:
        yield url


def run_search(url: str, slo: Slo, **load: Any) -> tuple[Any, Any, list[str]]:
    """Open the UI on `server`, press `a`, wait for the search's end and for the load to go
    on after it, quit; (the app, its driver, the search's log lines)."""
    opts = options(url, output_len=TOKENS, window=3.0, **load)
    seen: list[Any] = []
    with prepared(opts) as prep:
        info = RunInfo.from_extra(prep.extra, prep.config.plan, slo, rate_step=0.1)
        driver = SessionDriver(
            lambda: LoadSession(prep.config, slo, interval_s=0.1), {}, knee_options=KNOBS
        )
        driver.start()
        app = create_app(info, driver)

        def done() -> list[KneeReported]:
            return [m for m in seen if isinstance(m, KneeReported) and m.done]

        async def scenario() -> None:
            async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
                await wait_for(pilot, lambda: bool(app.telemetry and app.telemetry.completed))
                await pilot.press("a")
                start = time.monotonic()
                await wait_for(pilot, lambda: bool(done()), timeout=KNOBS["budget_s"] + 60)
                assert time.monotonic() - start <= KNOBS["budget_s"] + 30
                # the load goes on after the search: not paused, requests still completing
                before = app.telemetry.completed
                await wait_for(pilot, lambda: app.telemetry.completed > before + 10, 15)
                assert not app.telemetry.paused and app.main.query_one("#header")
                assert app.is_running and app.crashed is None
                # the chart's load line is the concurrency in closed loop, not a rate
                unit = "concurrency" if load.get("concurrency") else "offered req/s"
                assert app.main.query_one(LatencyChart).load_unit == unit
                # the answer stays on the curve's border, whatever the log shows since
                answer = app.main.query_one(KneeCurve).border_subtitle
                assert answer == done()[-1].answer and answer.startswith("knee "), answer
                await pilot.press("q")
                await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

        asyncio.run(scenario())
    assert not driver.session.process.alive
    assert driver.session.failure is None
    lines = [m.text for m in seen if isinstance(m, KneeReported)]
    print("\n".join(lines))  # the search, for the log of a failing run
    return app, driver, lines


@pytest.mark.slow
def test_closed_loop_a_search_runs_to_its_knee(kslot: str) -> None:
    # TTFT p99 <= 2 × TTFT: a request beyond the K slots waits for a whole service (100 ms);
    # the margin below it absorbs a busy CI host's own delay
    slo = Slo.parse(f"ttft_p99<={2 * TTFT_MS:g}ms")
    app, driver, lines = run_search(kslot, slo, concurrency=1, request_rate=math.inf)
    assert lines[0].startswith("knee search started at 1 concurrent"), lines
    assert lines[-1].startswith("knee: "), lines  # found, and shown in the log
    assert lines[-1] in "\n".join(app.events)
    knee = driver._knee_result
    # at c = K the server has no slack: a search asking for a steady state may stop one below
    assert knee["concurrency"] in (K - 1, K), lines
    assert knee["first_bad"] is None or knee["first_bad"] > knee["concurrency"]
    assert knee["steps"] and all(s["value"] == int(s["value"]) for s in knee["steps"])


@pytest.mark.slow
def test_open_loop_a_search_runs_to_its_knee(kslot: str) -> None:
    capacity = K / SERVICE_S  # 40 req/s: no rate above it is sustainable
    slo = Slo.parse(f"ttft_p99<={3 * TTFT_MS:g}ms")  # a queue wait p99 within 2 × TTFT
    start = capacity / 8
    app, driver, lines = run_search(kslot, slo, request_rate=start)
    assert lines[0].startswith(f"knee search started at {start:g} req/s"), lines
    assert lines[-1].startswith("knee: "), lines
    assert lines[-1] in "\n".join(app.events)
    knee = driver._knee_result
    assert start <= knee["rate"] < capacity, lines
    assert knee["first_bad"] is None or knee["first_bad"] > knee["rate"]
