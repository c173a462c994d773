"""SVG snapshots of the UI's screens, fed deterministic telemetry (llmtop.tui.demo).

No process and no clock: the frames carry their own elapsed time, so the header and the
event log are identical on every run. Update with `pytest --snapshot-update` after a
deliberate change, and look at the SVGs before committing them.
"""

from __future__ import annotations

from typing import Any

from llmtop.slo import Slo
from llmtop.tui.app import create_app
from llmtop.tui.demo import DEMO_SLO, demo_info, ramp
from llmtop.tui.messages import StepsUpdated, TelemetryReceived

SLO = Slo.parse(DEMO_SLO)


def fed(seconds: int) -> Any:
    """A run_before that feeds `seconds` of the demo ramp, one frame at a time."""

    async def run_before(pilot: Any) -> None:
        frames, steps = ramp(SLO, seconds)
        for f in frames:
            pilot.app.post_message(TelemetryReceived(f))
            await pilot.pause()
        pilot.app.post_message(StepsUpdated(steps))
        await pilot.pause()

    return run_before


def test_main_screen_wide(snap_compare: Any) -> None:
    """120×40 during the ramp, as the SLO breaks at the last step."""
    assert snap_compare(create_app(demo_info()), terminal_size=(120, 40), run_before=fed(70))


def test_main_screen_80x24(snap_compare: Any) -> None:
    """The smallest supported terminal."""
    assert snap_compare(create_app(demo_info()), terminal_size=(80, 24), run_before=fed(45))


def test_main_screen_before_telemetry(snap_compare: Any) -> None:
    """What the operator sees in the first quarter second."""
    assert snap_compare(create_app(demo_info(Slo())), terminal_size=(100, 30))


def test_help_screen(snap_compare: Any) -> None:
    assert snap_compare(create_app(demo_info()), terminal_size=(100, 32), press=["question_mark"])


def test_too_small(snap_compare: Any) -> None:
    assert snap_compare(create_app(demo_info()), terminal_size=(60, 16))
