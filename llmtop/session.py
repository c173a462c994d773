"""The parent's side of a run: the load process, the collector and the telemetry it yields.

Headless reporting and the UI both drive a `LoadSession`: `pump()` reads whatever the load
process shipped, feeds the collector, and returns a telemetry frame when an interval closes.
"""

from __future__ import annotations

import time
from typing import Any

from llmtop.config import RunConfig
from llmtop.load import channel as ch
from llmtop.load.process import LoadProcess, yield_to_load_process
from llmtop.metrics.collector import METRICS, Collector, error_rate, step_summary
from llmtop.metrics.telemetry import SeriesPoint, Telemetry
from llmtop.output.exports import step_index_of
from llmtop.output.snapshot import IntervalRecorder
from llmtop.slo import Slo, histogram_value_ms

LIVE_METRICS = ("ttft", "tpot", "itl", "e2el", "send_slip", "queue_wait")


class LoadSession:
    """Owns one load process and its collector."""

    def __init__(
        self,
        config: RunConfig,
        slo: Slo | None = None,
        interval_s: float = 0.25,
        encode: bool = False,
        server_sample: Any = None,
        yield_cpu: bool = True,
    ) -> None:
        self.config = config
        self.yield_cpu = yield_cpu  # put this process below the load process (SCHED_IDLE)
        self.priority_note = ""
        self.slo = slo or Slo()
        self.interval_s = interval_s
        self.encode = encode
        self.server_sample = server_sample  # callable → latest server metrics dict, or None
        self.collector = Collector(config.window_s, self.slo.per_request_limits_ms())
        self.series: list[SeriesPoint] = []
        self.server_series: list[dict[str, Any]] = []
        self.record_sink: Any = None  # called with (record, step index) for --save-requests
        self.interval_recorder = IntervalRecorder()
        self._next_series_ns = 0
        self.process = LoadProcess(config)
        self.status: ch.StatusReported | None = None
        self.stopped: ch.LoadStopped | None = None
        self.failure: str | None = None
        self.start_ns = 0
        self._next_tick_ns = 0

    def start(self) -> None:
        self.start_ns = time.perf_counter_ns()
        self._next_tick_ns = self.start_ns + round(self.interval_s * 1e9)
        self.process.start()
        self.priority_note = yield_to_load_process() if self.yield_cpu else ""
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
        elif isinstance(msg, ch.LoadStarted):
            self.collector.load_started(msg.t_ns)
        elif isinstance(msg, ch.MeasurementStarted):
            self.collector.measurement_started(msg.t_ns)
        elif isinstance(msg, ch.LoadStopped):
            self.stopped = msg
        elif isinstance(msg, ch.LoadFailed):
            self.failure = self.failure or msg.message

    def pump(self, timeout_s: float = 0.05) -> Telemetry | None:
        """Read what arrived (waiting at most `timeout_s`); a frame when an interval closed."""
        for msg in self.process.receive(timeout_s):
            self._dispatch(msg)
        chan = self.process.channel
        if not self.finished and chan is not None and chan.closed and not self.process.alive:
            self.failure = "the load process ended unexpectedly"
        now = time.perf_counter_ns()
        if now >= self._next_tick_ns or self.finished:
            self._next_tick_ns = now + round(self.interval_s * 1e9)
            return self.tick(now)
        return None

    def tick(self, now_ns: int) -> Telemetry:
        interval = self.collector.tick(now_ns)
        self.interval_recorder.add(interval, self.start_ns)
        window = self.collector.window_summary(LIVE_METRICS)
        counts, span_s = self.collector.window_counts()
        slo_results = self.slo.evaluate(self._window_value, error_rate(counts)) if self.slo else []
        server = self.server_sample() if self.server_sample is not None else None
        st = self.status
        total = self.collector.counts
        encoded: dict[str, bytes] = {}
        if self.encode:
            for m in METRICS:
                h = interval.histograms[m]
                if h.get_total_count():
                    encoded[m] = h.encode()
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
            request_rate=counts.completed / span_s if span_s else 0.0,
            output_tps=counts.output_tokens / span_s if span_s else 0.0,
            total_tps=(counts.output_tokens + counts.input_tokens) / span_s if span_s else 0.0,
            load_cpu_s=st.load_cpu_s if st else 0.0,
            precise_pacer=st.precise_pacer if st else False,
            connections=st.connections if st else 0,
            interval_histograms=encoded,
            goodput=counts.good / span_s if span_s and self.slo else None,
            slo=tuple(slo_results),
            step_index=len(self.collector.steps) - 1,
            server=server,
        )
        if now_ns >= self._next_series_ns:
            self._next_series_ns = now_ns + 1_000_000_000
            self.series.append(SeriesPoint.from_telemetry(frame))
        return frame

    def _window_value(self, metric: str, stat: str) -> float:
        """An SLO statistic over the live window (any percentile, from merged histograms)."""
        merged = self.collector.window_histogram(metric)
        return histogram_value_ms({metric: merged}, metric, stat)

    # -- control ------------------------------------------------------------------------
    def set_rate(self, rate: float, label: str = "") -> None:
        """Change the offered rate now; a new rate step starts with it."""
        self.process.send(ch.RateSet(rate))
        self.collector.begin_step(time.perf_counter_ns(), rate, label)

    def set_concurrency(self, concurrency: int, label: str = "") -> None:
        self.process.send(ch.ConcurrencySet(concurrency))
        self.collector.begin_step(time.perf_counter_ns(), float(concurrency), label)

    def step_summaries(self) -> list[dict[str, Any]]:
        now = time.perf_counter_ns()
        return [step_summary(s, self.slo, now) for s in self.collector.steps]

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

    def summary(self) -> dict[str, Any]:
        out = self.collector.summary()
        if self.slo:
            c = self.collector.counts
            results = self.slo.evaluate(
                lambda m, st: histogram_value_ms(self.collector.cumulative, m, st), error_rate(c)
            )
            out["slo"] = {
                "text": self.slo.text,
                "ok": all(r.ok for r in results),
                "limits": [{"limit": r.limit.text, "value": r.value, "ok": r.ok} for r in results],
            }
        out["load_cpu_s"] = self.status.load_cpu_s if self.status else 0.0
        out["precise_pacer"] = self.status.precise_pacer if self.status else False
        out["receive_stamps"] = {
            "kernel": self.status.kernel_stamps if self.status else 0,
            "user": self.status.user_stamps if self.status else 0,
        }
        return out
