"""The `l` key: the operator types an SLO in the UI (as `--slo`); the gauges judge by it at once
and a following `a` search uses it. Real load process against the scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from llmtop.cli.options import prepared
from llmtop.session import LoadSession
from llmtop.slo import Slo, SloError
from llmtop.tui.app import create_app
from llmtop.tui.demo import demo_info
from llmtop.tui.model import RunInfo
from llmtop.tui.widgets.gauge import LatencyGauge
from llmtop.tui.worker import SessionDriver
from tests.support.scripted_server import Script, ScriptedServer
from tests.test_tui import options, wait_for

TTFT_MS = 40.0  # every request's first token comes this late: a 10 ms limit breaks, 5 s holds


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    srv = ScriptedServer(Script(ttft_ms=TTFT_MS, itl_ms=2.0)).start_in_thread()
    yield srv
    srv.stop_thread()


async def type_slo(pilot: Any, text: str) -> None:
    """Press l, replace the prefilled SLO with `text`, press Enter."""
    await pilot.press("l")
    await pilot.pause()
    pilot.app.screen.query_one("#slo-value").value = ""
    await pilot.press(*text, "enter")
    await pilot.pause()


def test_l_sets_the_slo_the_gauges_judge_it_and_a_uses_it(scripted: ScriptedServer) -> None:
    opts = options(scripted.url, request_rate=10.0, output_len=4, window=2.0)
    with prepared(opts) as prep:
        info = RunInfo.from_extra(prep.extra, prep.config.plan, Slo(), rate_step=0.1)
        knobs = {"min_step_s": 1.0, "max_step_s": 3.0}
        driver = SessionDriver(
            lambda: LoadSession(prep.config, Slo(), interval_s=0.1), {}, knee_options=knobs
        )
        driver.start()
        app = create_app(info, driver)

        async def scenario() -> None:
            async with app.run_test(size=(100, 30)) as pilot:
                gauge = app.main.query_one("#g-ttft", LatencyGauge)
                await wait_for(pilot, lambda: bool(app.telemetry and app.telemetry.completed))
                assert gauge.level == "neutral" and not app.telemetry.slo
                await pilot.press("a")  # without an SLO the search says how to give one
                await wait_for(pilot, lambda: any("press l" in t for t in app.events))

                await type_slo(pilot, "ttft_p99<=10ms")  # the running load breaks it
                assert app.screen is app.main and app.info.slo.text == "ttft_p99<=10ms"
                assert gauge.limit is not None and gauge.limit.threshold == 10.0
                await wait_for(pilot, lambda: gauge.level == "red")
                await wait_for(pilot, lambda: any("SLO breached: ttft" in t for t in app.events))
                assert driver.session.slo.text == "ttft_p99<=10ms"

                await type_slo(pilot, "ttft_p99<=5s")  # a loose one: met
                await wait_for(pilot, lambda: gauge.level == "green")
                assert all(r.ok for r in app.telemetry.slo)
                assert [r.limit.text for r in app.telemetry.slo] == ["ttft_p99<=5s"]

                await pilot.press("a")  # the search now has an SLO: it runs on the new one
                await wait_for(pilot, lambda: any("started at 10" in t for t in app.events))
                await wait_for(pilot, lambda: any("-> good" in t for t in app.events), 30)
                await pilot.press("up")  # take over: the search ends, its steps kept
                await wait_for(pilot, lambda: driver._knee_result is not None)
                await pilot.press("q")
                await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

        asyncio.run(scenario())
    assert not driver.session.process.alive
    steps = driver._knee_result["steps"]  # judged on the SLO typed, not the one at start
    assert steps and steps[0]["slo"][0]["limit"] == "ttft_p99<=5s"


async def test_an_invalid_slo_shows_the_error_and_keeps_the_old_one() -> None:
    old = Slo.parse("ttft_p99<=1s")
    app = create_app(demo_info(old))
    async with app.run_test(size=(80, 24)) as pilot:
        await type_slo(pilot, "ttft<=1s")
        with pytest.raises(SloError) as parse_error:
            Slo.parse("ttft<=1s")
        error = app.screen.query_one("#slo-error").render()
        assert str(error) == str(parse_error.value)  # --slo's own one-line message
        assert type(app.screen).__name__ == "SloInputScreen"
        await pilot.press("escape")  # cancel: the SLO in force stays
        await pilot.pause()
        assert app.screen is app.main and app.info.slo == old
        assert app.main.query_one("#g-ttft", LatencyGauge).limit == old.limits[0]
        await pilot.press("l")
        await pilot.pause()
        assert app.screen.query_one("#slo-value").value == "ttft_p99<=1s"  # prefilled


async def test_the_slo_dialog_fits_80x24_and_its_error_wraps_whole() -> None:
    from textual.widgets import Label

    app = create_app(demo_info(Slo()))
    async with app.run_test(size=(80, 24)) as pilot:
        await type_slo(pilot, "nope_p99<=1s")
        dialog = app.screen.query_one("#slo-dialog")
        assert dialog.region.right <= 80 and dialog.region.bottom <= 24
        for label in app.screen.query(Label):
            text = str(label.render())
            rows = label.size.height
            assert label.size.width * rows >= len(text), (text, label.size)
        error = str(app.screen.query_one("#slo-error", Label).render())
        assert error.startswith("bad SLO 'nope_p99<=1s': unknown metric 'nope'")
