"""The llmtop app: one factory (`create_app`) used by the CLI, the pilot and snapshot tests.

The app renders what the worker posts and turns keys into commands on the worker's queue;
it never calls the load session itself (see worker.py for why).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from llmtop.errors import redact
from llmtop.metrics.telemetry import Telemetry
from llmtop.output.workers import client_bound_part
from llmtop.slo import Slo
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
from llmtop.tui.model import (
    GAUGE_METRICS,
    RunInfo,
    format_ms,
    format_rate,
    next_concurrency,
    next_rate,
)
from llmtop.tui.widgets.event_log import EventLog
from llmtop.tui.widgets.gauge import LatencyGauge
from llmtop.tui.widgets.gpu_panel import GpuPanel
from llmtop.tui.widgets.header import RunHeader
from llmtop.tui.widgets.help_screen import HelpScreen
from llmtop.tui.widgets.knee_curve import KneeCurve
from llmtop.tui.widgets.rate_input import RateInputScreen
from llmtop.tui.widgets.rate_panel import RatePanel
from llmtop.tui.widgets.server_panel import ServerPanel
from llmtop.tui.widgets.slo_input import SloInputScreen
from llmtop.tui.widgets.spectrum import SpectrumPanel
from llmtop.tui.widgets.throughput import ThroughputPanel
from llmtop.tui.widgets.timeseries import LatencyChart
from llmtop.tui.widgets.workers import WorkersLine
from llmtop.tui.worker import SessionDriver

MIN_W, MIN_H = 72, 20  # below this the screen says so instead of drawing a mess
WIDE_W, TALL_H = 120, 40
STOP_TIMEOUT_S = 10.0  # quit anyway if the worker does not report back in time
MAX_RATE = 1e6


class MainScreen(Screen[None]):
    """The one screen of widgets; it fits itself to the terminal on every resize."""

    def __init__(self, info: RunInfo) -> None:
        super().__init__()
        self.info = info

    def compose(self) -> ComposeResult:
        yield RunHeader(self.info, id="header")
        yield Static(
            f"The terminal is too small for llmtop: make it at least {MIN_W}×{MIN_H}.\n"
            "The load keeps running; q quits.",
            id="too-small",
        )
        with Vertical(id="main"):
            yield RatePanel(self.info.closed_loop, id="rate")
            yield WorkersLine(id="workers")  # shown when the load is split or client-bound
            with Horizontal(id="gauges"):
                for metric, label, definition in GAUGE_METRICS:
                    yield LatencyGauge(metric, label, definition, self.info.slo, id=f"g-{metric}")
            yield ThroughputPanel(bool(self.info.slo), id="throughput")
            with Horizontal(id="charts"):
                yield LatencyChart(self.info.slo, self.info.closed_loop, id="chart")
                yield KneeCurve(self.info.slo, id="knee")
            yield SpectrumPanel(id="spectrum")  # the p key swaps it with the charts
            with Horizontal(id="bottom"):
                yield EventLog(id="log")
                yield ServerPanel(id="server")
                yield GpuPanel(id="gpu")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(ServerPanel).display = False
        self.query_one(GpuPanel).display = False
        self.query_one(SpectrumPanel).display = False
        self.fit(self.size.width, self.size.height)

    def on_resize(self, event: events.Resize) -> None:
        self.fit(event.size.width, event.size.height)

    def fit(self, width: int, height: int) -> None:
        small = width < MIN_W or height < MIN_H
        self.query_one("#too-small").display = small
        main = self.query_one("#main")
        main.display = not small
        main.set_class(width >= WIDE_W, "-wide")
        main.set_class(height >= TALL_H, "-tall")


class LlmtopApp(App[int]):
    """Live load testing: the operator steers the rate, the gauges judge it against the SLO."""

    CSS_PATH = "llmtop.tcss"
    TITLE = "llmtop"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "rate_up", "rate+"),
        Binding("down", "rate_down", "rate−"),
        # PgUp / PgDn are in the help screen: with them the footer does not fit 80 columns
        Binding("pageup", "rate_double", "×2", show=False),
        Binding("pagedown", "rate_half", "÷2", show=False),
        Binding("equals_sign,e", "type_rate", "set", key_display="="),
        Binding("space", "pause", "pause"),
        Binding("r", "reset_window", "reset"),
        Binding("s", "snapshot", "save"),
        Binding("l", "set_slo", "SLO"),
        Binding("a", "knee", "knee"),
        Binding("p", "spectrum", "spectrum", show=False),  # listed in the help screen
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    def __init__(
        self,
        info: RunInfo,
        driver: SessionDriver | None = None,
        exit_after: float | None = None,
    ) -> None:
        super().__init__()
        self.info = info
        self.driver = driver
        self.exit_after = exit_after
        self.asked = info.start_rate  # what the operator asked for (the load reports back)
        self.paused = False
        self.telemetry: Telemetry | None = None
        self.load_pid: int | None = None
        self.stopped = False
        self.closed = False
        self.quitting = False
        self._breached: set[str] = set()
        self._errors_seen: dict[str, int] = {}
        self._phase = ""
        self._last_error_check = -1
        self.events: list[str] = []  # the event log's lines, kept after the app exits
        self._screen_up = False
        self._pending: float | None = None  # a rate sent that the load has not reported yet
        self._early: list[Message] = []  # news that came before the screen was up
        self.main: MainScreen
        self.crashed: str | None = None  # a widget's exception: one line, printed after exit

    # -- layout -------------------------------------------------------------------------
    def get_default_screen(self) -> MainScreen:
        self.main = MainScreen(self.info)
        return self.main

    def on_ready(self) -> None:
        """The main screen is up: start the load worker (and the --exit-after timer)."""
        self._screen_up = True
        for early in self._early:
            self.post_message(early)
        self._early.clear()
        slo = self.info.slo.text if self.info.slo else "none (l sets one)"
        self.log_event(f"started: {self.info.mode}; SLO {slo}; ? for help")
        if self.driver is not None:
            self.run_worker(
                partial(self.driver.run, self.post_message),
                name="load session",
                thread=True,
                exit_on_error=False,
            )
        if self.exit_after is not None:
            self.set_timer(self.exit_after, self.action_quit)

    # -- telemetry in -------------------------------------------------------------------
    def on_telemetry_received(self, message: TelemetryReceived) -> None:
        if not self._screen_up:
            self._early.append(message)
            return
        f = self.telemetry = message.frame
        if self._pending is None or f.offered_rate == self._pending:
            self._pending = None  # the load offers what was asked: show it as it is
            if not math.isinf(f.offered_rate) and not self.quitting:
                self.asked = f.offered_rate
        self.main.query_one(RatePanel).asked = math.nan if self._pending is None else self._pending
        self.main.query_one(RunHeader).frame = f
        self.main.query_one(RatePanel).frame = f
        self.main.query_one(WorkersLine).frame = f
        for gauge in self.main.query(LatencyGauge):
            gauge.frame = f
        self.main.query_one(ThroughputPanel).frame = f
        self.main.query_one(LatencyChart).frame = f
        self.main.query_one(ServerPanel).server = f.server
        self.main.query_one(GpuPanel).server = f.server
        spectrum = self.main.query_one(SpectrumPanel)
        if spectrum.display:
            spectrum.frame = f
        if not self.stopped and not self.quitting:
            self.main.query_one(RunHeader).state = "paused" if f.paused else f.phase
        self._events_from(f)

    def _events_from(self, f: Telemetry) -> None:
        """Turn changes between frames into log lines: phases, SLO breaches, new errors."""
        if f.client_bound and not getattr(self, "_client_bound", False):
            # the workers' guard (docs/scale.md): about the client, and labelled so
            self.log_event(client_bound_part(f) or f.client_bound, "bold red")
        self._client_bound = bool(f.client_bound)
        if f.phase != self._phase:
            if self._phase:
                self.log_event(f"phase: {f.phase}")
            self._phase = f.phase
        for r in f.slo:
            if r.limit not in self.info.slo.limits:
                continue  # judged on an SLO the operator has since replaced (the l key)
            key = r.limit.text
            if math.isnan(r.value):
                continue
            value = f"{r.value:.1%}" if r.limit.metric == "error_rate" else format_ms(r.value)
            if not r.ok and key not in self._breached:
                self._breached.add(key)
                self.log_event(
                    f"SLO breached: {r.limit.label} (now {value}) at {self._rate_text(f)}",
                    "bold red",
                )
            elif r.ok and key in self._breached:
                self._breached.discard(key)
                self.log_event(f"SLO met again: {r.limit.label} (now {value})", "green")
        second = int(f.elapsed_s)
        if second != self._last_error_check:
            self._last_error_check = second
            for kind, n in sorted(f.errors.items()):
                new = n - self._errors_seen.get(kind, 0)
                if new > 0:
                    self._errors_seen[kind] = n
                    self.log_event(f"errors: {kind} +{new} (total {n})", "red")

    def on_steps_updated(self, message: StepsUpdated) -> None:
        if not self._screen_up:
            self._early.append(message)
            return
        self.main.query_one(KneeCurve).steps = message.steps

    def on_load_started(self, message: LoadStarted) -> None:
        self.load_pid = message.pid
        self.main.query_one(RunHeader).state = "running"
        self.log_event(f"load process started (pid {message.pid})")

    def on_command_applied(self, message: CommandApplied) -> None:
        self.log_event(message.text, "cyan")

    def on_snapshot_saved(self, message: SnapshotSaved) -> None:
        self.log_event(f"snapshot saved: {message.path}", "green")

    def on_snapshot_failed(self, message: SnapshotFailed) -> None:
        self.log_event(f"snapshot not saved: {message.error}", "bold red")

    def on_knee_reported(self, message: KneeReported) -> None:
        self.log_event(message.text, "magenta")
        if message.started or message.answer:  # the last answer stays in view until a new one
            curve = self.main.query_one(KneeCurve)
            curve.border_subtitle = redact(message.answer) or None

    def on_load_stopped(self, message: LoadStopped) -> None:
        self.stopped = True
        header = self.main.query_one(RunHeader)
        if message.failure:
            header.state = "FAILED"
            first = redact(message.failure).splitlines()[0]
            self.log_event(f"the load stopped: {first}", "bold red")
            self.notify(first, title="load failed", severity="error", timeout=30, markup=False)
        else:
            header.state = "stopping" if self.quitting else "finished"
            self.log_event(f"the load stopped: {message.reason}; q quits", "yellow")

    def on_load_closed(self, message: LoadClosed) -> None:
        self.closed = True
        if message.saved:
            self.log_event(f"snapshot saved: {message.saved}", "green")
        if self.quitting:
            self.exit(return_code=1 if self.crashed else 0)

    def log_event(self, text: str, style: str = "") -> None:
        """Every line passes redact(): error texts and knee notes may carry a server's
        strings, and a terminal control in them must not reach the terminal."""
        text = redact(text)
        elapsed = self.telemetry.elapsed_s if self.telemetry else 0.0
        with contextlib.suppress(NoMatches):  # late news while the app shuts down
            log = self.main.query_one(EventLog)
            log.event(elapsed, text, style)
            self.events = log.lines_text

    def _rate_text(self, f: Telemetry | None = None) -> str:
        rate = f.offered_rate if f is not None else self.asked
        if self.info.closed_loop:
            return f"concurrency {rate:g}"
        return f"{format_rate(rate)} req/s"

    # -- keys ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "knee" and not self.info.knee:
            return False
        modal = len(self.screen_stack) > 1
        return not (modal and action not in ("quit", "help"))

    def _send(self, command: cmd.Command) -> None:
        if self.driver is not None:
            self.driver.send(command)

    def _set_asked(self, value: float) -> None:
        value = float(max(1, int(value))) if self.info.closed_loop else min(value, MAX_RATE)
        if value == self.asked:
            return
        self.asked = self._pending = value
        self.main.query_one(RatePanel).asked = value
        if self.info.closed_loop:
            self._send(cmd.SetConcurrency(int(value)))
        else:
            self._send(cmd.SetRate(value))
        if self.driver is None:
            self.log_event(f"rate → {self._rate_text()}", "cyan")

    def _step(self, direction: int) -> None:
        if self.info.closed_loop:
            self._set_asked(next_concurrency(int(self.asked), self.info.rate_step, direction))
        else:
            self._set_asked(next_rate(self.asked, self.info.rate_step, direction))

    def action_rate_up(self) -> None:
        self._step(+1)

    def action_rate_down(self) -> None:
        self._step(-1)

    def action_rate_double(self) -> None:
        self._set_asked(self.asked * 2)

    def action_rate_half(self) -> None:
        if self.info.closed_loop:
            self._set_asked(max(1, int(self.asked) // 2))
        else:
            self._set_asked(max(self.asked / 2, 0.01))

    def action_type_rate(self) -> None:
        def done(rate: float | None) -> None:
            if rate is not None:
                self._set_asked(rate)

        self.push_screen(RateInputScreen(self.asked, self.info.closed_loop), done)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._send(cmd.Pause() if self.paused else cmd.Resume())

    def action_reset_window(self) -> None:
        self._send(cmd.ResetWindow())

    def action_snapshot(self) -> None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(self.info.snapshot_dir) / f"llmtop-snapshot-{stamp}.json"
        self._send(cmd.SaveSnapshot(str(path)))
        self.log_event(f"saving a snapshot to {path}…")

    def action_set_slo(self) -> None:
        """Type an SLO (as --slo): the gauges, goodput and a following `a` search use it."""

        def done(slo: Slo | None) -> None:
            if slo is not None:
                self.apply_slo(slo)

        self.push_screen(SloInputScreen(self.info.slo), done)

    def apply_slo(self, slo: Slo) -> None:
        """Every widget that draws the SLO takes the new one now; the worker judges by it."""
        self.info = dataclasses.replace(self.info, slo=slo)
        self._breached.clear()
        for gauge in self.main.query(LatencyGauge):
            gauge.set_slo(slo)
        self.main.query_one(ThroughputPanel).set_slo(slo)
        self.main.query_one(LatencyChart).slo = slo
        self.main.query_one(LatencyChart).refresh()
        self.main.query_one(KneeCurve).slo = slo
        self.main.query_one(KneeCurve).refresh()
        self._send(cmd.SetSlo(slo))
        if self.driver is None:
            self.log_event(f"SLO → {slo.text or 'none'}", "cyan")

    def action_knee(self) -> None:
        self._send(cmd.StartKnee())

    def action_spectrum(self) -> None:
        """Swap the charts for the percentile spectrum (client and server), and back."""
        spectrum = self.main.query_one(SpectrumPanel)
        spectrum.display = not spectrum.display
        self.main.query_one("#charts").display = not spectrum.display
        if spectrum.display and self.telemetry is not None:
            spectrum.frame = self.telemetry

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self.push_screen(HelpScreen(knee=self.info.knee, rate_step=self.info.rate_step))

    def _handle_exception(self, error: Exception) -> None:
        """A widget (or handler) raised: the app exits, so the load must stop with it.

        The worker stops the load and keeps its results (the --save snapshot, as on q);
        the CLI prints one line instead of Textual's traceback once the terminal is back
        and exits non-zero (`crashed`).
        """
        first = (str(error).splitlines() or [""])[0]
        self.crashed = redact(f"{type(error).__name__}: {first}".rstrip(": "))
        self.quitting = True
        self._send(cmd.Stop())
        super()._handle_exception(error)
        if self.driver is not None:  # the CLI says it in one line; pilot tests re-raise
            self._exit_renderables.clear()

    async def action_quit(self) -> None:
        """Stop the load (keeping its results), then leave; a second press leaves at once."""
        if self.driver is None or self.closed or self.quitting:
            self.exit(0)
            return
        self.quitting = True
        self.main.query_one(RunHeader).state = "stopping"
        self.log_event("stopping the load…", "yellow")
        self._send(cmd.Stop())
        self.set_timer(STOP_TIMEOUT_S, partial(self.exit, 0))


def create_app(
    info: RunInfo, driver: SessionDriver | None = None, exit_after: float | None = None
) -> LlmtopApp:
    """The one way to build the app (the CLI, the pilot tests and the snapshot tests)."""
    return LlmtopApp(info, driver=driver, exit_after=exit_after)
