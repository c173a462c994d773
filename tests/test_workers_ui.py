"""The UI's workers line (issue 13): hidden for one worker, one entry per worker otherwise,
and the guard's verdict on screen and in the event log. Fed deterministic telemetry."""

from __future__ import annotations

import dataclasses

from llmtop.metrics.telemetry import WorkerLine
from llmtop.slo import Slo
from llmtop.tui.app import create_app
from llmtop.tui.demo import DEMO_SLO, demo_info, ramp
from llmtop.tui.messages import TelemetryReceived
from llmtop.tui.widgets.event_log import EventLog
from llmtop.tui.widgets.workers import WorkersLine

SLO = Slo.parse(DEMO_SLO)
BOUND = "the CLIENT is the bottleneck, not the server: worker 1 CPU 97 %; --workers 3 would fix it"


async def test_the_workers_line_shows_each_worker_and_the_verdict() -> None:
    app = create_app(demo_info(SLO), None)
    frames, _ = ramp(SLO, 3)
    async with app.run_test(size=(140, 40)) as pilot:
        app.post_message(TelemetryReceived(frames[0]))
        await pilot.pause()
        line = app.query_one(WorkersLine)
        assert not line.display  # one worker, not bound: the screen stays as it was
        workers = (
            WorkerLine(0, "vm", 41.0, 0.21, 0.1, 100, 0),
            WorkerLine(1, "vm", 97.0, 1.8, 4.0, 98, 1),
            WorkerLine(2, "vm", None, None, None, 7, 0, lost=True),
        )
        bound = dataclasses.replace(frames[1], workers=workers, client_bound=BOUND)
        app.post_message(TelemetryReceived(bound))
        await pilot.pause()
        assert line.display
        text = line.render().plain
        assert text.startswith("workers 3")
        assert "#0 CPU 41% slip p99 0.21 ms" in text and "#1 CPU 97% slip p99 1.80 ms" in text
        assert "#2 lost" in text and "the CLIENT is the bottleneck" in text
        log = app.query_one(EventLog)
        # the guard is about the client and says so first: no "server:" that reads as a label
        guard = [t for t in log.lines_text if "worker 1 CPU 97 %" in t]
        assert len(guard) == 1
        assert guard[0].split(" ", 1)[1].startswith("CLIENT-BOUND: worker 1 CPU 97 %")
        assert "server" not in guard[0]
        app.post_message(TelemetryReceived(dataclasses.replace(bound, t_ns=bound.t_ns + 1)))
        await pilot.pause()
        assert sum("worker 1 CPU 97 %" in t for t in log.lines_text) == 1  # once while it lasts
