"""`llmtop run`: drive a load session to its end and report, surviving Ctrl-C and SIGTERM."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from llmtop import __version__
from llmtop.config import RunConfig
from llmtop.output.console import ProgressLine, print_summary, write_json_output
from llmtop.output.exports import RequestLog
from llmtop.session import LoadSession
from llmtop.slo import Slo

STOP_GRACE_S = 5.0


@dataclass
class HeadlessResult:
    summary: dict[str, Any]
    interrupted: bool
    failure: str | None = None
    notes: list[str] = field(default_factory=list)


class Interrupts:
    """Counts SIGINT/SIGTERM instead of raising, so results are never lost mid-write."""

    def __init__(self) -> None:
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_headless(
    config: RunConfig,
    extra: dict[str, Any],
    json_path: str | None,
    progress: bool,
    slo: Slo | None = None,
    server_sample: Any = None,
    server_samples: Any = None,
    save_path: str | None = None,
    requests_path: str | None = None,
) -> HeadlessResult:
    """Run the load to its end (or to Ctrl-C), then print and save what was measured."""
    session = LoadSession(config, slo, server_sample=server_sample)
    log = RequestLog(requests_path) if requests_path else None
    interrupted = False
    line = ProgressLine(progress)
    with Interrupts() as interrupts:
        session.start()
        if log is not None:
            log.start_ns = session.start_ns
            session.record_sink = log.on_record
        try:
            stop_sent_at: float | None = None
            while not session.finished:
                frame = session.pump(0.05)
                if interrupts.count and stop_sent_at is None:
                    interrupted = True
                    session.stop(cancel_in_flight=True)
                    stop_sent_at = time.monotonic()
                if stop_sent_at is not None and (
                    interrupts.count > 1 or time.monotonic() - stop_sent_at > STOP_GRACE_S
                ):
                    break  # asked twice, or the child does not answer: keep what we have
                line.show(frame)
            session.drain_shipped()
        finally:
            session.close()
            session.tick(time.perf_counter_ns())
            line.clear()
    if log is not None:
        log.close()
    if server_samples is not None:
        session.server_series = server_samples()
    summary = session.summary()
    summary.update(extra)
    summary["llmtop_version"] = __version__
    summary["interrupted"] = interrupted
    if session.stopped is not None:
        summary["stop_reason"] = session.stopped.reason
    result = HeadlessResult(summary, interrupted, session.failure)
    if json_path:
        write_json_output(json_path, summary)
    if save_path:
        from llmtop.output.snapshot import build_snapshot, save_snapshot

        save_snapshot(save_path, build_snapshot(session, extra))
    print_summary(summary, sys.stdout)
    if save_path:
        sys.stdout.write(f"snapshot    {save_path}\n")
    return result
