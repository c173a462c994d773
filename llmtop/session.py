"""The parent's side of a run: the load process, the collector and the telemetry it yields.

Every command drives a `LoadSession` through `drive()`, the one pump loop: `pump()` reads
whatever the load process shipped, feeds the collector, and returns a telemetry frame when an
interval closes; `drive()` adds the stop protocol (ask once, wait a grace period, give up on a
second interrupt) and always closes the session with a final frame.

A run that does not end normally says how in `failure_record()` (the `"failure"` field of
every JSON and snapshot): the load failed, the load process died (exit code or signal), an
interrupt (SIGINT, SIGTERM, SIGHUP) stopped it, or the load process never confirmed a stop.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmtop.config import RunConfig
from llmtop.errors import ConfigError, redact
from llmtop.load import channel as ch
from llmtop.load.process import yield_to_load_process
from llmtop.load.workers import WorkerLost, make_group
from llmtop.metrics.catalog import LIVE_METRICS
from llmtop.metrics.collector import Collector
from llmtop.metrics.figures import run_summary, window_figures
from llmtop.metrics.intervals import IntervalRecorder, step_index_of
from llmtop.metrics.prefix import server_prefix_cache
from llmtop.metrics.serverside import gpu_summary, server_latency
from llmtop.metrics.telemetry import SeriesPoint, Telemetry
from llmtop.slo import Slo

STOP_GRACE_S = 5.0  # how long the load process gets to stop before we keep what we have
PUMP_S = 0.05  # the longest a caller waits between two looks at its own state
FD_RESERVE = 64  # descriptors the processes need besides one per connection


def fds_needed(config: RunConfig) -> int | None:
    """Connections the plan can hold open at once (None: not known before it runs)."""
    plan = config.plan
    if plan.closed_loop:
        return plan.concurrency
    if plan.max_concurrency:
        return plan.max_concurrency
    if plan.num_requests is not None and plan.request_rate == float("inf"):
        return plan.num_requests  # all at once
    return None


def ensure_fd_limit(config: RunConfig) -> str | None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; a one-line error if still short.

    Every request in flight holds a socket in the load process; past the limit, connects
    fail with EMFILE and look like server errors. Returns a note when the limit was raised.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    want = fds_needed(config)
    note = None
    if soft != hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            note = f"open-file limit raised from {soft} to {target}"
            soft = target
        except (OSError, ValueError):
            pass
    if want is not None and want + FD_RESERVE > soft:
        raise ConfigError(
            f"{want} requests in flight need {want + FD_RESERVE} open files, but the limit is "
            f"{soft} (ulimit -n): raise it, or lower --concurrency / --max-concurrency"
        )
    return note


class LoadSession:
    """Owns one load process and its collector."""

    def __init__(
        self,
        config: RunConfig,
        slo: Slo | None = None,
        interval_s: float = 0.25,
        server_sample: Any = None,
        yield_cpu: bool = True,
    ) -> None:
        self.config = config
        self.yield_cpu = yield_cpu  # put this process below the load process (SCHED_IDLE)
        self.slo = slo or Slo()
        self.interval_s = interval_s
        self.server_sample = server_sample  # callable → latest server metrics dict, or None
        self.collector = Collector(config.window_s, self.slo.per_request_limits_ms())
        self.series: list[SeriesPoint] = []
        self.server_series: list[dict[str, Any]] = []
        self.record_sink: Any = None  # called with (record, step index) for --save-requests
        self.interval_recorder = IntervalRecorder()
        self._next_series_ns = 0
        # --workers N load processes here, or Ray actors over a cluster (llmtop.load.workers)
        self.process = make_group(config)
        self.process.limits_ms = self.slo.per_request_limits_ms()  # remote collectors' goodput
        self.process.wants_records = lambda: self.record_sink is not None  # Ray: raw records
        self.worker_events: list[dict[str, Any]] = []  # workers lost mid-run, and when
        self.status: ch.StatusReported | None = None
        self.stopped: ch.LoadStopped | None = None
        self.failure: str | None = None
        self.death: dict[str, Any] | None = None  # how the load process died, if it did
        self.interrupted_by: str | None = None  # the signal that stopped the run (drive())
        self.stop_unconfirmed = False  # drive() gave up waiting for the stop to be confirmed
        self.start_ns = 0
        self._next_tick_ns = 0

    def set_slo(self, slo: Slo) -> None:
        """Judge by a new SLO from the next frame on (the UI's `l`): the frame's verdicts, the
        collector's goodput, and the workers' own per-request limits."""
        self.slo = slo
        limits_ms = slo.per_request_limits_ms()
        self.collector.set_request_limits_ms(limits_ms)
        self.process.limits_ms = limits_ms

    def start(self) -> None:
        ensure_fd_limit(self.config)
        self.start_ns = time.perf_counter_ns()
        self._next_tick_ns = self.start_ns + round(self.interval_s * 1e9)
        self.process.start()
        if self.yield_cpu:
            yield_to_load_process()
        plan = self.config.plan
        offered = float(plan.concurrency) if plan.closed_loop else plan.request_rate
        self.collector.begin_step(self.start_ns, offered)

    @property
    def finished(self) -> bool:
        return self.stopped is not None or self.failure is not None

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, ch.RecordsShipped):
            self.collector.add(msg.records)
            if self.record_sink is not None:
                for r in msg.records:
                    self.record_sink(r, step_index_of(self.collector.steps, r.intended_ns))
        elif isinstance(msg, ch.StatusReported):
            self.status = msg
            self.collector.in_flight_reported(msg.t_ns, msg.in_flight_stamps)
        elif isinstance(msg, ch.LoadStarted):
            self.collector.load_started(msg.t_ns)
        elif isinstance(msg, ch.MeasurementStarted):
            self.collector.measurement_started(msg.t_ns)
        elif isinstance(msg, ch.LoadStopped):
            self.stopped = msg
        elif isinstance(msg, WorkerLost):
            self.worker_events.append(self.process.lost_event(msg, self.start_ns))
        elif hasattr(msg, "merge_into"):  # interval histograms from remote workers (Ray)
            msg.merge_into(self.collector)
        elif isinstance(msg, ch.LoadFailed):
            self.failure = self.failure or redact(msg.message)

    def pump(self, timeout_s: float = 0.05) -> Telemetry | None:
        """Read what arrived (waiting at most `timeout_s`); a frame when an interval closed."""
        for msg in self.process.receive(timeout_s):
            self._dispatch(msg)
        chan = self.process.channel
        if not self.finished and chan is not None and chan.closed and not self.process.alive:
            self.death = self.process.death()
            self.failure = self.death["message"]
        now = time.perf_counter_ns()
        if now >= self._next_tick_ns or self.finished:
            self._next_tick_ns = now + round(self.interval_s * 1e9)
            return self.tick(now)
        return None

    def tick(self, now_ns: int) -> Telemetry:
        interval = self.collector.tick(now_ns)
        self.interval_recorder.add(interval, self.start_ns)
        window = self.collector.window_summary(LIVE_METRICS)
        live = window_figures(self.collector)
        span_s = live.duration_s
        slo_results = live.judge(self.slo) if self.slo else []
        server = self.server_sample() if self.server_sample is not None else None
        st = self.status
        total = self.collector.counts
        frame = Telemetry(
            t_ns=now_ns,
            elapsed_s=(now_ns - self.start_ns) / 1e9,
            phase=st.phase if st else "starting",
            offered_rate=st.offered_rate if st else self.config.plan.request_rate,
            paused=st.paused if st else False,
            sent=st.sent if st else 0,
            in_flight=st.in_flight if st else 0,
            queued=st.queued if st else 0,
            completed=total.completed,
            failed=total.failed,
            errors=dict(total.errors),
            window_s=span_s,
            window=window,
            request_rate=live.request_throughput,
            output_tps=live.output_throughput,
            total_tps=live.total_throughput,
            load_cpu_s=st.load_cpu_s if st else 0.0,
            precise_pacer=st.precise_pacer if st else False,
            connections=st.connections if st else 0,
            goodput=live.goodput if span_s and self.slo else None,
            slo=tuple(slo_results),
            step_index=len(self.collector.steps) - 1,
            server=server,
            workers=self.process.book.lines(now_ns),
            client_bound=self.process.book.verdict(now_ns).message or None,
        )
        if now_ns >= self._next_series_ns:
            self._next_series_ns = now_ns + 1_000_000_000
            self.series.append(SeriesPoint.from_telemetry(frame))
        return frame

    # -- control ------------------------------------------------------------------------
    def set_rate(self, rate: float, label: str = "") -> None:
        """Change the offered rate now; a new rate step starts with it."""
        at_ns = self.process.send(ch.RateSet(rate))  # workers change at an agreed instant
        self.collector.begin_step(at_ns or time.perf_counter_ns(), rate, label)

    def set_concurrency(self, concurrency: int, label: str = "") -> None:
        at_ns = self.process.send(ch.ConcurrencySet(concurrency))
        self.collector.begin_step(at_ns or time.perf_counter_ns(), float(concurrency), label)

    def pause(self) -> None:
        self.process.send(ch.Paused())

    def resume(self) -> None:
        self.process.send(ch.Resumed())

    def stop(self, cancel_in_flight: bool = True) -> None:
        self.process.send(ch.StopRequested(cancel_in_flight))

    def wait_stopped(self, timeout_s: float) -> None:
        """Keep collecting until the load process says it stopped (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while not self.finished and time.monotonic() < deadline:
            self.pump(0.05)

    def drain_shipped(self) -> None:
        """Read whatever the load process shipped along with its stop message."""
        for _ in range(3):
            self.pump(0.02)

    def close(self) -> None:
        self.process.join(5.0)

    def failure_record(self) -> dict[str, Any] | None:
        """How the run ended when it did not end normally (None when it did)."""
        if self.death is not None:
            return {"kind": "load_process_died", **self.death}
        if self.failure is not None:
            return {"kind": "load_failed", "message": self.failure.splitlines()[0]}
        if self.interrupted_by is not None:
            return {
                "kind": "interrupted",
                "signal": self.interrupted_by,
                "message": f"stopped by {self.interrupted_by}; requests in flight were cancelled",
            }
        if self.stop_unconfirmed:
            return {
                "kind": "stop_unconfirmed",
                "message": "the load process did not confirm the stop; its last records may miss",
            }
        return None

    def summary(self) -> dict[str, Any]:
        out = run_summary(self.collector, self.slo)
        out["failure"] = self.failure_record()
        out["load_cpu_s"] = self.status.load_cpu_s if self.status else 0.0
        out["precise_pacer"] = self.status.precise_pacer if self.status else False
        out.update(self.process.describe())  # "workers": per-worker figures, "ray"
        out["workers"] = self.process.book.summaries(self.start_ns)
        out["workers_lost"] = list(self.worker_events)
        out["client_saturation"] = self.process.book.run_verdict().as_dict()
        out["receive_stamps"] = {
            "kernel": self.status.kernel_stamps if self.status else 0,
            "user": self.status.user_stamps if self.status else 0,
        }
        # the server's own view (issue 15): its latency histograms and GPU telemetry
        col = self.collector
        begin_ns = col.measure_from_ns or self.start_ns or None
        out["server_latency"] = server_latency(self.server_series, begin_ns)
        out["gpu"] = gpu_summary(
            self.server_series,
            col.measure_from_ns or col.first_send_ns,
            col.last_end_ns,
            col.counts.output_tokens,
        )
        # beside the client's cached_prompt_tokens: the server's prefix-cache hit rate
        out["server_prefix_cache"] = server_prefix_cache(self.server_series)
        return out


class Interrupts:
    """THE signal counter: SIGINT, SIGTERM and SIGHUP (a lost SSH session) all mean "stop".

    Counting (the default) records them instead of raising, so a load stops cleanly and its
    results are never lost mid-write. `raising=True` turns each into KeyboardInterrupt, for
    stretches with no load to stop gracefully (an engine's health wait, between sweep
    points), so every `finally` on the way out runs. Installed only from the main thread.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, raising: bool = False) -> None:
        self.count = 0
        self.last: str | None = None  # name of the last signal received
        self.raising = raising
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1
        with contextlib.suppress(ValueError):
            self.last = signal.Signals(signum).name
        if self.raising:
            raise KeyboardInterrupt(self.last)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@dataclass(frozen=True)
class DriveEnded:
    """How `drive()` ended: by itself, because the caller asked, or by an interrupt."""

    interrupted: bool
    stopped_by_caller: bool
    final: Telemetry


# on_frame(frame or None) is called after every pump; returning True asks the load to stop.
OnFrame = Callable[[Telemetry | None], bool | None]


def drive(
    session: LoadSession,
    on_frame: OnFrame | None = None,
    interrupts: Interrupts | None = None,
    grace_s: float = STOP_GRACE_S,
) -> DriveEnded:
    """Pump a started session until the load ends, then close it: the one loop.

    A stop (asked by `on_frame` or by an interrupt) cancels what is in flight and waits up
    to `grace_s` for the load process to say it stopped; a second interrupt stops waiting.
    Whatever happens, the session is closed and a last frame is taken, so every record that
    arrived is in the collector.
    """
    interrupted = by_caller = False
    stop_sent_at: float | None = None
    try:
        while not session.finished:
            frame = session.pump(PUMP_S)
            if on_frame is not None and stop_sent_at is None and on_frame(frame):
                by_caller = True
            if interrupts is not None and interrupts.count:
                interrupted = True
                session.interrupted_by = interrupts.last or "an interrupt"
            if (by_caller or interrupted) and stop_sent_at is None:
                session.stop(cancel_in_flight=True)
                stop_sent_at = time.monotonic()
            if stop_sent_at is not None and (
                (interrupts is not None and interrupts.count > 1)
                or time.monotonic() - stop_sent_at > grace_s
            ):
                session.stop_unconfirmed = not session.finished
                break  # asked twice, or the child does not answer: keep what we have
        session.drain_shipped()
    except BaseException:
        if not session.finished:  # a bug above us must never leave the load running unseen
            try:
                session.stop(cancel_in_flight=True)
                session.wait_stopped(grace_s)
            except Exception:
                pass
        raise
    finally:
        session.close()
        final = session.tick(time.perf_counter_ns())
    return DriveEnded(interrupted, by_caller, final)
