"""Pilot tests of the live UI: real load process against a real loopback server, and
deterministic telemetry frames for the colour rules."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from llmtop.cli.options import RunOptions, prepared
from llmtop.session import LoadSession
from llmtop.slo import Slo
from llmtop.tui.app import LlmtopApp, create_app
from llmtop.tui.demo import demo_info, frame
from llmtop.tui.messages import LoadClosed, StepsUpdated, TelemetryReceived
from llmtop.tui.model import RunInfo, next_concurrency, next_rate, parse_rate
from llmtop.tui.widgets.event_log import EventLog
from llmtop.tui.widgets.gauge import LatencyGauge
from llmtop.tui.widgets.server_panel import ServerPanel
from llmtop.tui.worker import SessionDriver
from tests.support.fault_server import Behaviour, FaultServer

SLO = Slo.parse("ttft_p99<=1s,tpot_p99<=50ms")


def options(url: str, **kw: Any) -> RunOptions:
    """What the `llmtop [URL]` command would hand to run_ui, small and fast."""
    o: dict[str, Any] = dict(
        url=url, api="completions", model="", api_key=None, headers=(), sim_engine="vllm",
        sim_gpu="a100-80g", sim_model="llama-3-8b", timeout=30.0, read_timeout=10.0,
        connect_timeout=5.0, input_len=16, output_len=8, ignore_eos=True, seed=0,
        request_rate=4.0, burstiness=1.0, max_concurrency=None, concurrency=None,
        duration=86400.0, num_requests=None, warmup=0.0, window=10.0, profile=None,
    )  # fmt: skip
    o.update(kw)
    return RunOptions.from_params(o, default_requests=None)


async def wait_for(pilot: Any, pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def live_app(server: FaultServer, **kw: Any) -> tuple[LlmtopApp, SessionDriver, Any]:
    """A real app with a real load process driving `server` (the preflight runs first)."""
    o = options(server.url, **kw)
    cm = prepared(o)
    prep = cm.__enter__()
    plan = prep.config.plan
    info = RunInfo.from_extra(prep.extra, plan, SLO, rate_step=0.1)
    driver = SessionDriver(lambda: LoadSession(prep.config, SLO, interval_s=0.1), prep.extra)
    driver.start()
    return create_app(info, driver), driver, cm


def test_keys_change_the_rate_the_load_process_offers(fault_server: FaultServer) -> None:
    app, driver, cm = live_app(fault_server, request_rate=2.0)
    pid = driver.session.process.pid
    seen: list[Any] = []

    async def scenario() -> None:
        async with app.run_test(message_hook=seen.append) as pilot:

            def offered() -> float:
                return app.telemetry.offered_rate if app.telemetry else math.nan

            await wait_for(pilot, lambda: offered() == 2.0 and app.telemetry.completed > 0)
            await pilot.press("up")
            await wait_for(pilot, lambda: offered() == 2.2)
            await pilot.press("pageup")
            await wait_for(pilot, lambda: offered() == 4.4)
            await pilot.press("down")
            await wait_for(pilot, lambda: offered() == 4.0)
            await pilot.press("pagedown")
            await wait_for(pilot, lambda: offered() == 2.0)
            arrived = len(fault_server.requests)
            await wait_for(pilot, lambda: len(fault_server.requests) > arrived + 2)
            # the gauges show the window the load process measured
            gauge = app.main.query_one("#g-ttft", LatencyGauge)
            assert gauge.frame is app.telemetry
            assert gauge.frame.window["ttft"].count > 0
            assert gauge.level == "green"
            await pilot.press("q")
            await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

    try:
        asyncio.run(scenario())
    finally:
        cm.__exit__(None, None, None)
    assert driver.done.is_set()
    assert not driver.session.process.alive, f"load process {pid} still running"
    assert any(isinstance(m, LoadClosed) for m in seen)
    assert any(isinstance(m, StepsUpdated) and len(m.steps) >= 5 for m in seen)
    log = "\n".join(app.events)
    assert "rate → 2.20 req/s" in log and "rate → 4.40 req/s" in log


def test_errors_during_the_run_reach_the_log_and_the_error_count() -> None:
    def plan(i: int, body: dict[str, Any]) -> Behaviour:
        return Behaviour(kind="status", status=503) if i % 2 == 0 and i > 0 else Behaviour()

    server = FaultServer(plan=plan).start()
    app, driver, cm = live_app(server, request_rate=8.0)

    async def scenario() -> None:
        async with app.run_test() as pilot:
            log = app.main.query_one(EventLog)
            await wait_for(pilot, lambda: any("http_503" in line for line in log.lines_text))
            assert app.telemetry is not None and app.telemetry.failed > 0
            await pilot.press("q")
            await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

    try:
        asyncio.run(scenario())
    finally:
        cm.__exit__(None, None, None)
        server.stop()


def test_server_gone_mid_run_shows_errors_not_a_crash() -> None:
    server = FaultServer().start()
    app, driver, cm = live_app(server, request_rate=8.0, connect_timeout=1.0)

    async def scenario() -> None:
        async with app.run_test() as pilot:
            await wait_for(pilot, lambda: bool(app.telemetry and app.telemetry.completed))
            server.stop()
            log = app.main.query_one(EventLog)
            await wait_for(pilot, lambda: any("errors:" in line for line in log.lines_text))
            assert app.is_running
            await pilot.press("q")
            await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

    try:
        asyncio.run(scenario())
    finally:
        cm.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("ttft_p99", "level"),
    [(500.0, "green"), (799.0, "green"), (800.0, "amber"), (1000.0, "amber"), (1001.0, "red")],
)
async def test_gauge_colour_flips_at_the_slo_limit(ttft_p99: float, level: str) -> None:
    app = create_app(demo_info(SLO))
    async with app.run_test(size=(120, 40)) as pilot:
        app.post_message(TelemetryReceived(frame(5.0, 4.0, ttft_p99, 10.0, SLO)))
        await pilot.pause()
        gauge = app.main.query_one("#g-ttft", LatencyGauge)
        assert gauge.level == level
        assert gauge.has_class(f"-{level}")
        assert app.main.query_one("#g-tpot", LatencyGauge).level == "green"
        assert app.main.query_one("#g-e2el", LatencyGauge).level == "neutral"  # no limit


async def test_breach_and_recovery_are_logged_once() -> None:
    app = create_app(demo_info(SLO))
    async with app.run_test(size=(120, 40)) as pilot:
        for t, ttft in ((1, 500), (2, 1200), (3, 1300), (4, 700)):
            app.post_message(TelemetryReceived(frame(float(t), 4.0, ttft, 10.0, SLO)))
            await pilot.pause()
        lines = app.main.query_one(EventLog).lines_text
        breaches = [x for x in lines if "SLO breached: ttft" in x]
        assert len(breaches) == 1 and breaches[0].startswith("00:00:02")
        assert any("SLO met again: ttft" in x for x in lines)


async def test_newer_frame_replaces_an_unread_one() -> None:
    a = TelemetryReceived(frame(1.0, 1.0, 100, 10, SLO))
    b = TelemetryReceived(frame(2.0, 1.0, 100, 10, SLO))
    assert b.can_replace(a)
    assert not b.can_replace(StepsUpdated(()))


async def test_server_panel_hidden_without_server_metrics() -> None:
    app = create_app(demo_info(SLO))
    async with app.run_test(size=(120, 40)) as pilot:
        panel = app.main.query_one(ServerPanel)
        app.post_message(TelemetryReceived(frame(1.0, 2.0, 100, 10, SLO)))
        await pilot.pause()
        assert not panel.display
        app.post_message(TelemetryReceived(frame(2.0, 2.0, 100, 10, SLO, server={"running": 3})))
        await pilot.pause()
        assert panel.display


async def test_small_terminal_says_so_and_recovers() -> None:
    app = create_app(demo_info(SLO))
    async with app.run_test(size=(60, 16)) as pilot:
        await pilot.pause()
        assert app.main.query_one("#too-small").display
        assert not app.main.query_one("#main").display
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert not app.main.query_one("#too-small").display
        assert app.main.query_one("#main").display


async def test_typed_rate_and_help_screen() -> None:
    app = create_app(demo_info(SLO))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("equals_sign")
        await pilot.pause()
        inp = app.screen.query_one("#rate-value")
        inp.value = ""  # type: ignore[attr-defined]
        await pilot.press("7", ".", "5", "enter")
        await pilot.pause()
        assert app.asked == 7.5
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("up")  # keys do not reach the rate while help is open
        assert app.asked == 7.5
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.main


def test_rate_arithmetic() -> None:
    assert next_rate(1.0, 0.1, +1) == 1.1
    assert next_rate(next_rate(7.3, 0.1, +1), 0.1, -1) == 7.3
    assert next_rate(0.01, 0.1, -1) == 0.01
    assert next_concurrency(1, 0.1, +1) == 2 and next_concurrency(1, 0.1, -1) == 1
    assert next_concurrency(40, 0.1, +1) == 44
    assert parse_rate(" 12.5 ") == 12.5
    for bad in ("0", "-1", "inf", "fast"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_a_runs_the_knee_search_and_the_arrows_take_over(fault_server: FaultServer) -> None:
    """`a` starts the same state machine as `llmtop knee`; ↑ hands control back at once."""
    from llmtop.tui.messages import KneeReported

    app, driver, cm = live_app(fault_server, request_rate=4.0)
    seen: list[Any] = []

    def knee_lines() -> list[str]:
        return [m.text for m in seen if isinstance(m, KneeReported)]

    async def scenario() -> None:
        async with app.run_test(message_hook=seen.append) as pilot:
            await wait_for(pilot, lambda: app.telemetry is not None and app.telemetry.completed > 0)
            await pilot.press("a")
            await wait_for(pilot, lambda: any("started at 4" in t for t in knee_lines()))
            # the machine moves the offered rate by itself: a ramp step doubles it
            await wait_for(pilot, lambda: app.telemetry.offered_rate == 8.0, timeout=25)
            assert any("-> good" in t for t in knee_lines())
            await pilot.press("up")  # the operator takes over
            await wait_for(pilot, lambda: any(isinstance(m, KneeReported) and m.done for m in seen))
            await pilot.press("q")
            await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

    try:
        asyncio.run(scenario())
    finally:
        cm.__exit__(None, None, None)
    assert driver._knee is None and driver._knee_result is not None
    assert driver._knee_result["steps"], "the steps found so far are kept"
