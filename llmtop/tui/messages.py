"""Messages the worker thread posts to the app: past events carrying immutable data.

A newer `TelemetryReceived` (or `StepsUpdated`) replaces one the app has not read yet, so a
slow render never builds a backlog of stale frames (toolong's habit).
"""

from __future__ import annotations

from textual.message import Message

from llmtop.metrics.telemetry import Telemetry
from llmtop.tui.model import StepPoint


class TelemetryReceived(Message):
    """A telemetry frame closed (~every 250 ms)."""

    def __init__(self, frame: Telemetry) -> None:
        super().__init__()
        self.frame = frame

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TelemetryReceived)


class StepsUpdated(Message):
    """The rate steps held so far, for the latency–throughput curve (~every second)."""

    def __init__(self, steps: tuple[StepPoint, ...]) -> None:
        super().__init__()
        self.steps = steps

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StepsUpdated)


class LoadStarted(Message):
    """The load process is running (its pid, for the curious and the tests)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__()
        self.pid = pid


class CommandApplied(Message):
    """The worker sent a control command to the load process (e.g. a new rate)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class SnapshotSaved(Message):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path


class SnapshotFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class KneeReported(Message):
    """The knee search moved on (a line for the log), started, or ended (`done`); `answer`
    is its end in a few words, kept on the curve's border where log lines cannot push it
    out of view."""

    def __init__(
        self, text: str, done: bool = False, started: bool = False, answer: str = ""
    ) -> None:
        super().__init__()
        self.text = text
        self.done = done
        self.started = started
        self.answer = answer


class LoadStopped(Message):
    """The load process ended: its plan ran out (`reason`) or it failed (`failure`)."""

    def __init__(self, reason: str, failure: str | None) -> None:
        super().__init__()
        self.reason = reason
        self.failure = failure


class LoadClosed(Message):
    """The worker finished: the load process is gone and the exit snapshot (if any) written."""

    def __init__(self, saved: str | None) -> None:
        super().__init__()
        self.saved = saved
