"""The one thread that drives the `LoadSession`; the UI talks to it only through a queue.

Timing is sacred: the load runs in its own process (LoadSession starts it), and this thread
only drives it (`llmtop.session.drive`, the one loop every command uses), applies the
operator's commands between pumps, and posts
immutable frames to the app. Every session call (start, pump, set_rate, snapshot...) happens
here, so no lock is needed and no widget ever touches the session or its deques.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from textual.message import Message

from llmtop.metrics.telemetry import Telemetry
from llmtop.session import drive
from llmtop.tui import commands as cmd
from llmtop.tui.messages import (
    CommandApplied,
    KneeReported,
    LoadClosed,
    LoadStarted,
    LoadStopped,
    SnapshotFailed,
    SnapshotSaved,
    StepsUpdated,
    TelemetryReceived,
)
from llmtop.tui.model import StepPoint, format_rate, step_point

STEPS_EVERY_S = 1.0
SETTLED_S = 30.0  # a step ended this long ago no longer changes enough to recompute


class SessionDriver:
    """Owns the session in the worker thread; `send()` is the UI's only way in."""

    def __init__(
        self,
        make_session: Callable[[], Any],
        extra: dict[str, Any],
        save_path: str | None = None,
        server_series: Callable[[], list[dict[str, Any]]] | None = None,
        knee_options: dict[str, Any] | None = None,
    ) -> None:
        self._make_session = make_session
        self.knee_options = knee_options or {}  # KneePlan fields for `a` (--budget, ...)
        self.extra = extra
        self.save_path = save_path
        self.server_series = server_series
        self.saved: str | None = None  # the exit snapshot, once written
        self.commands: queue.Queue[cmd.Command] = queue.Queue()
        self.done = threading.Event()
        self.session: Any = None  # touched by the worker thread only
        self._post: Callable[[Message], object] = lambda m: None
        self._steps_cache: dict[int, StepPoint] = {}
        self._knee: Any = None
        self._next_steps = 0.0
        self.ran = threading.Event()  # run() began: only it may end the session now
        self._claim_lock = threading.Lock()

    # -- the UI side --------------------------------------------------------------------
    def send(self, command: cmd.Command) -> None:
        """Queue a command for the worker (thread-safe, never blocks)."""
        self.commands.put(command)

    # -- the worker side ----------------------------------------------------------------
    def start(self) -> None:
        """Create the session and start the load process, before the app runs.

        In the calling (main) thread on purpose: spawning a process needs the real stdout /
        stderr file descriptors, which Textual replaces while it runs. The worker thread
        takes the session over from here (the thread start orders the hand-over).
        """
        self.session = self._make_session()
        self.session.start()

    def _claim(self) -> bool:
        """True for the one caller (the worker, or abandon()) that drives the session."""
        with self._claim_lock:
            if self.ran.is_set():
                return False
            self.ran.set()
            return True

    def run(self, post: Callable[[Message], object]) -> None:
        """The worker body: drive the session until Stop, then keep its results."""
        if self._claim():
            self._drive(post)

    def _drive(self, post: Callable[[Message], object]) -> None:
        self._post = post
        session = self.session
        saved: str | None = None
        try:
            if session is None:
                raise RuntimeError("SessionDriver.start() was not called")
            post(LoadStarted(session.process.pid))
            ended = drive(session, self._on_frame)
            post(TelemetryReceived(ended.final))
            self._post_steps(session)
            if not ended.stopped_by_caller:  # the load ended by itself: the UI stays up
                reason = session.stopped.reason if session.stopped else "failed"
                post(LoadStopped(reason, session.failure))
                self._serve_until_stop(session)
        except Exception as exc:  # the UI shows it; the terminal must still be restored
            post(LoadStopped("failed", f"{type(exc).__name__}: {exc}"))
        finally:
            if session is not None and self.save_path:
                saved = self.saved = self._save(session, self.save_path)
            post(LoadClosed(saved))
            self.done.set()

    def abandon(self) -> None:
        """The app ended before run() began (it failed while starting): stop the load here,
        keeping what it measured, so no load process is left running unseen."""
        if self.session is None or not self._claim():
            return
        self.send(cmd.Stop())
        self._drive(lambda m: None)

    def _on_frame(self, frame: Telemetry | None) -> bool:
        """Between pumps: apply the operator's commands, post what changed; True on Stop."""
        session = self.session
        if self._drain(session):
            return True
        if frame is not None:
            self._post(TelemetryReceived(frame))
            if self._knee is not None:
                self._knee_tick(session, frame)
        now = time.monotonic()
        if now >= self._next_steps:
            self._next_steps = now + STEPS_EVERY_S
            self._post_steps(session)
        return False

    def _serve_until_stop(self, session: Any) -> None:
        """Nothing more will arrive; keep serving snapshot commands until Stop."""
        while not self._drain(session):
            with contextlib.suppress(queue.Empty):
                self.commands.put(self.commands.get(timeout=0.25))

    def _drain(self, session: Any) -> bool:
        """Apply every queued command; True when asked to stop."""
        while True:
            try:
                c = self.commands.get_nowait()
            except queue.Empty:
                return False
            if isinstance(c, cmd.Stop):
                return True
            self._apply(session, c)

    def _apply(self, session: Any, c: cmd.Command) -> None:
        finished = session.finished
        if isinstance(c, cmd.SaveSnapshot):
            path = self._save(session, c.path)
            if path:
                self._post(SnapshotSaved(path))
            return
        if isinstance(c, cmd.StartKnee):
            self._start_knee(session)
            return
        if isinstance(c, cmd.SetSlo):
            self._set_slo(session, c.slo)
            return
        if finished:
            self._post(CommandApplied("the load has stopped: nothing to change"))
            return
        if isinstance(c, (cmd.SetRate, cmd.SetConcurrency)) and self._knee is not None:
            runner = self._knee  # the operator takes over: keep what the search found so far
            self._finish_knee(session, runner.search.stop(time.perf_counter_ns() / 1e9).result)
        if isinstance(c, cmd.SetRate):
            session.set_rate(c.rate)
            self._post(CommandApplied(f"rate → {format_rate(c.rate)} req/s"))
        elif isinstance(c, cmd.SetConcurrency):
            session.set_concurrency(c.concurrency)
            self._post(CommandApplied(f"concurrency → {c.concurrency}"))
        elif isinstance(c, cmd.Pause):
            session.pause()
            self._post(CommandApplied("arrivals paused"))
        elif isinstance(c, cmd.Resume):
            session.resume()
            self._post(CommandApplied("arrivals resumed"))
        elif isinstance(c, cmd.ResetWindow):
            session.collector.reset_window()
            self._post(CommandApplied("window reset"))

    def _set_slo(self, session: Any, slo: Any) -> None:
        """Judge by a new SLO from the next frame on: the gauges, goodput, the step points.

        A knee search under way was judged on the old SLO: it ends here, keeping its steps.
        """
        if self._knee is not None:
            runner = self._knee
            self._finish_knee(session, runner.search.stop(time.perf_counter_ns() / 1e9).result)
        session.set_slo(slo)
        self._steps_cache.clear()  # settled steps' verdicts were on the old SLO
        self._next_steps = 0.0
        self._post(CommandApplied(f"SLO → {slo.text or 'none'}"))

    def _save(self, session: Any, path: str) -> str | None:
        from llmtop.output.snapshot import SnapshotError, build_snapshot, save_snapshot

        if self.server_series is not None:
            with contextlib.suppress(Exception):
                session.server_series = self.server_series()
        knee = getattr(self, "_knee_result", None)
        try:
            return str(save_snapshot(path, build_snapshot(session, self.extra, knee=knee)))
        except SnapshotError as exc:
            self._post(SnapshotFailed(str(exc)))
        except Exception as exc:  # never lose the run over a snapshot
            self._post(SnapshotFailed(f"{type(exc).__name__}: {exc}"))
        return None

    def _post_steps(self, session: Any) -> None:
        """Step points for the curve; settled steps come from the cache."""
        now = time.perf_counter_ns()
        out = []
        for step in session.collector.steps:
            cached = self._steps_cache.get(step.index)
            if cached is not None:
                out.append(cached)
                continue
            point = step_point(step, session.slo, now)
            if step.end_ns is not None and now - step.end_ns > SETTLED_S * 1e9:
                self._steps_cache[step.index] = point
            out.append(point)
        self._post(StepsUpdated(tuple(out)))

    # -- knee search: the same state machine as `llmtop knee`, one observation a frame ---
    def _start_knee(self, session: Any) -> None:
        from llmtop.knee.runner import KneeRunner
        from llmtop.knee.search import KneePlan

        if self._knee is not None:
            self._post(KneeReported("knee search already running (↑/↓ takes over)"))
            return
        if session.finished:
            self._post(KneeReported("the load has stopped: no knee search", done=True))
            return
        if not session.slo:
            self._post(KneeReported("knee search needs an SLO: press l to set one", done=True))
            return
        closed = session.config.plan.closed_loop
        st = session.status
        current = st.offered_rate if st is not None else 1.0
        if not math.isfinite(current) or current <= 0:
            current = 1.0
        start = max(1.0, float(int(current))) if closed else current
        plan = KneePlan(
            mode="concurrency" if closed else "rate",
            start=start,
            max_value=max(start * 64, 1024.0 if closed else 1000.0),
            **self.knee_options,
        )
        runner = KneeRunner(session, plan, log=None)
        self._knee = runner
        self._knee_reported = 0
        self._knee_next = 0.0
        self._knee_result = None
        runner.apply(runner.search.start(time.perf_counter_ns() / 1e9))
        unit = "concurrent" if closed else "req/s"
        text = f"knee search started at {start:g} {unit} (↑/↓ takes over)"
        self._post(KneeReported(text, started=True))

    def _knee_tick(self, session: Any, frame: Any) -> None:
        """Feed the knee machine one observation (every ~0.25 s) and apply its decision."""
        from llmtop.knee.document import knee_document, step_line
        from llmtop.knee.search import Done

        runner = self._knee
        now = time.monotonic()
        if now < self._knee_next:
            return
        self._knee_next = now + 0.25
        d = runner.search.observe(time.perf_counter_ns() / 1e9, runner.observation())
        for step in runner.search.steps[self._knee_reported :]:
            if step.verdict is None:
                break
            self._post(KneeReported(step_line(step, runner.plan).removeprefix("knee: ")))
            self._knee_reported += 1
        if isinstance(d, Done):
            self._finish_knee(session, d.result)
        else:
            runner.apply(d)
        _ = knee_document  # imported here so a failure shows at the first tick, not the end

    def _finish_knee(self, session: Any, result: Any) -> None:
        from llmtop.knee.document import knee_document, snapshot_knee

        runner = self._knee
        self._knee = None
        doc = knee_document(session, runner.judged, result, session.slo, runner.plan, self.extra)
        self._knee_result = snapshot_knee(doc)
        runner.release()  # a search ended during a drain must not leave the arrivals paused
        k = doc["knee"]
        value = k.get("rate") if k.get("rate") is not None else k.get("concurrency")
        if value is not None:
            tps = k.get("output_throughput")
            held = "sustained" if k.get("sustained") else "unconfirmed"
            if k.get("first_bad") is None:  # nothing tried broke the SLO: a floor, not a knee
                held += ", no load tried broke the SLO"
            unit = "req/s" if k.get("rate") is not None else "concurrent"
            at = f"{value:g}" if k.get("first_bad") is not None else f"at least {value:g}"
            conf = k.get("confidence", "?")
            text = f"knee: {at} {unit} ({held}, {'no' if conf == 'none' else conf} confidence)"
            if isinstance(tps, int | float):
                text += f", {tps:,.0f} output tok/s"
            answer = f"knee {at.replace('at least ', '≥ ')} {unit}, {held.split(',')[0]}"
        else:
            text = f"knee search ended without a knee: {result.reason}"
            answer = "no knee found"
        self._post(KneeReported(text, done=True, answer=answer))
