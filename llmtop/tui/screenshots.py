"""Retake `screenshots/` from a real run against the built-in simulator.

    python -m llmtop.tui.screenshots [--out screenshots] [--hold 8]

Drives the real app (real load process, real simulated engine) with Textual's pilot: a ramp
of rate steps with an SLO, saving the main screen mid-ramp, the latency–throughput curve at
the end, and the help screen. Takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from llmtop.config import LoadPlan, RunConfig, Target, Workload

RAMP = (2.0, 4.0, 8.0, 12.0, 16.0, 24.0)
SLO = "ttft_p99<=300ms,tpot_p99<=40ms"


def run_config() -> RunConfig:
    """The screenshot run: 1024 in / 256 out, starting at the ramp's first rate, no end."""
    return RunConfig(
        Target(""),
        Workload(1024, 256),
        LoadPlan(request_rate=RAMP[0], duration_s=86400.0),
        window_s=6.0,
    )


async def _drive(app: Any, out: Path, hold: float) -> None:
    async with app.run_test(size=(120, 40)) as pilot:
        for i, rate in enumerate(RAMP):
            if i:
                app.action_type_rate()
                await pilot.pause()
                app.screen.dismiss(rate)
            t_end = time.monotonic() + hold
            while time.monotonic() < t_end:
                await pilot.pause(0.25)
            if i == len(RAMP) // 2:
                app.save_screenshot("ramp.svg", str(out))
        await pilot.pause(1.5)
        app.save_screenshot("knee-curve.svg", str(out))
        await pilot.press("question_mark")
        await pilot.pause(0.3)
        app.save_screenshot("help.svg", str(out))
        await pilot.press("escape")
        await pilot.press("q")
        t_end = time.monotonic() + 15
        while app.is_running and time.monotonic() < t_end:
            await pilot.pause(0.2)


def main() -> None:
    from llmtop.session import LoadSession
    from llmtop.setup import prepare
    from llmtop.slo import Slo
    from llmtop.tui.app import create_app
    from llmtop.tui.model import RunInfo
    from llmtop.tui.worker import SessionDriver

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="screenshots")
    p.add_argument("--hold", type=float, default=8.0, help="seconds per rate step")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    slo = Slo.parse(SLO)
    with prepare(run_config()) as prep:
        poller = prep.start_poller()
        extra = prep.extra
        info = RunInfo.from_extra(extra, prep.config.plan, slo)
        driver = SessionDriver(
            lambda: LoadSession(prep.config, slo, server_sample=poller.latest), extra
        )
        driver.start()
        try:
            asyncio.run(_drive(create_app(info, driver), out, a.hold))
        finally:
            driver.done.wait(15)
            poller.stop()
    print(f"saved {', '.join(sorted(f.name for f in out.glob('*.svg')))} in {out}")


if __name__ == "__main__":
    main()
