"""The load loop's periodic jobs keep one timer handle each, however long the run.

The hour-long soak (issue 12) showed the load process growing ~18 MB an hour, linearly:
every tick of the 0.1 s / 0.25 s / 10 s jobs appended its next TimerHandle to a list that
was never trimmed (~24 handles a second).
"""

from __future__ import annotations

import asyncio

from llmtop.config import LoadPlan, RunConfig, Target, Workload
from llmtop.load.driver import LoadDriver
from tests.support.scripted_server import Script, ScriptedServer


def test_periodic_jobs_keep_one_handle_each() -> None:
    server = ScriptedServer(Script(ttft_ms=2, itl_ms=1, tokens=4))
    server.start_in_thread()
    try:
        config = RunConfig(
            Target(server.url, model="scripted"),
            Workload(input_len=8, output_len=4),
            LoadPlan(request_rate=50, duration_s=2.0),
        )
        counts: list[int] = []

        async def main() -> None:
            driver = LoadDriver(config, asyncio.get_running_loop(), lambda _msg: None)
            driver.start()
            jobs = len(driver._timers)
            for _ in range(8):  # ~80 ticks of the 0.1-s jobs over the run
                await asyncio.sleep(0.25)
                counts.append(len(driver._timers))
            await asyncio.wait_for(driver.finished, 10)
            assert jobs >= 3
            assert set(counts) == {jobs}, counts

        asyncio.run(main())
    finally:
        server.stop_thread()
