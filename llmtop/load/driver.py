"""The load loop: schedule → send → stream → record. Runs only inside the load process.

Everything here is callbacks on one event loop — no task per request, no histogram, no
formatting. Finished requests are batched as raw records and shipped every 100 ms.
"""

from __future__ import annotations

import asyncio
import gc
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Any

from llmtop.backends.http import ConnectionPool, Exchange
from llmtop.backends.openai import RequestFactory, parse_url
from llmtop.backends.triton import TritonRequestFactory
from llmtop.config import RunConfig
from llmtop.load import channel as ch
from llmtop.load.arrivals import NS_PER_S, ArrivalSchedule, TraceSchedule
from llmtop.load.conversations import Conversations
from llmtop.load.pacer import Pacer
from llmtop.load.trace import offsets_ns
from llmtop.metrics import records

SHIP_INTERVAL_S = 0.1
DUE_PER_WAKE = 1024  # sends per pacer wake-up; a burst beyond it goes on next loop turn
SWEEP_INTERVAL_S = 0.25
GC_INTERVAL_S = 10.0
# Closed loop: after a connect failure a slot waits before its next try, 10 ms doubling with
# each consecutive failure up to 1 s, so a dead server costs at most `concurrency` attempts
# (and records) a second instead of a spinning loop.
CONNECT_BACKOFF_MIN_S = 0.01
CONNECT_BACKOFF_MAX_S = 1.0


def connect_backoff_s(failures: int) -> float:
    """The wait before a closed-loop slot tries again after `failures` connect failures."""
    if failures <= 0:
        return 0.0
    return min(CONNECT_BACKOFF_MIN_S * 2 ** min(failures - 1, 30), CONNECT_BACKOFF_MAX_S)


class LoadDriver:
    """Sends requests on an open-loop schedule (or keeps C in flight) and times the streams."""

    def __init__(
        self, config: RunConfig, loop: asyncio.AbstractEventLoop, ship: Callable[[Any], None]
    ) -> None:
        self.cfg = config
        self.loop = loop
        self.ship = ship
        endpoint = parse_url(config.target.url)
        factory = TritonRequestFactory if config.target.api == "triton" else RequestFactory
        self.factory = factory(config, endpoint)
        self.pool = ConnectionPool(
            loop,
            endpoint.host,
            endpoint.port,
            endpoint.ssl,
            config.timeouts.connect_s,
            self._finished,
        )
        plan = config.plan
        self.closed_loop = plan.closed_loop
        self.concurrency = plan.concurrency or 0
        self.cap = plan.max_concurrency or 0
        rate = 0.0 if self.closed_loop else plan.request_rate
        self.schedule: ArrivalSchedule | TraceSchedule = (
            TraceSchedule(offsets_ns(config.trace), config.workload.trace_speed)
            if config.trace
            else ArrivalSchedule(rate, plan.burstiness, plan.seed)
        )
        self.pacer = Pacer(loop, self._on_due)
        self.in_flight: set[Exchange] = set()
        self.queue: deque[tuple[int, bool]] = deque()
        self.outbox: list[records.RequestRecord] = []
        self.sent = 0
        self.measured_sent = 0
        self.phase = "warmup"
        self.stopping = False
        self.stop_reason = ""
        self._paused = False
        self.finished: asyncio.Future[str] = loop.create_future()
        self.t0_ns = 0
        self.measure_from_ns = 0
        self.stop_at_ns: int | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.connect_failures = 0  # consecutive, all requests together; any answer resets it
        # conversations (docs/workloads.md): new ones start where a request would be sent
        self.convs = Conversations(self) if Conversations.wanted(self) else None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, t0_ns: int | None = None) -> None:
        """Start the load now, or at `t0_ns` (a group's common start barrier, just passed)."""
        plan = self.cfg.plan
        now = time.perf_counter_ns() if t0_ns is None else t0_ns
        self.t0_ns = now
        self.ship(ch.LoadStarted(now))
        self.measure_from_ns = now + round(plan.warmup_s * NS_PER_S)
        if plan.duration_s is not None:
            self.stop_at_ns = self.measure_from_ns + round(plan.duration_s * NS_PER_S)
        if plan.warmup_s <= 0:
            self._enter_measuring()
        self._every(SHIP_INTERVAL_S, self._ship)
        self._every(SHIP_INTERVAL_S, self.pool.rx_clock.refresh)
        self._every(SWEEP_INTERVAL_S, self._sweep)
        self._every(GC_INTERVAL_S, self._collect)
        if self.closed_loop:
            for _ in range(self.concurrency):
                self._start(now)
        else:
            self.schedule.start(now)
            self._on_due()

    def _every(self, period_s: float, fn: Callable[[], None]) -> None:
        """Call `fn` every `period_s`; only the next call's handle is kept (one slot per job:
        keeping every handle grew the load process by ~18 MB an hour, issue 12's soak)."""
        slot = len(self._timers)

        def tick() -> None:
            fn()
            if not self.finished.done():
                self._timers[slot] = self.loop.call_later(period_s, tick)

        self._timers.append(self.loop.call_later(period_s, tick))

    def _enter_measuring(self) -> None:
        self.phase = "measuring"
        self.ship(ch.MeasurementStarted(self.measure_from_ns))

    def request_stop(self, reason: str, cancel_in_flight: bool) -> None:
        """Stop sending new requests; cancel what is queued and in flight, or let it finish."""
        if not self.stopping:
            self.stopping = True
            self.phase = "draining"
            self.stop_reason = reason
            self.schedule.pause()
            self.pacer.arm(None)
        if self.convs is not None:
            self.convs.stop(reason, cancel_in_flight)
        if cancel_in_flight:
            self.queue.clear()
            for ex in list(self.in_flight):
                if ex.conn is not None:
                    ex.conn.fail(records.CANCELLED, "stopped by the user")
                else:
                    self.in_flight.discard(ex)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.convs is not None and self.convs.pending:
            return  # conversation turns still to send
        if self.stopping and not self.in_flight and not self.queue and not self.finished.done():
            self._ship()
            self.ship(ch.LoadStopped(time.perf_counter_ns(), self.stop_reason))
            for timer in self._timers:
                timer.cancel()
            self.pacer.close()
            self.pool.close()
            self.finished.set_result(self.stop_reason)

    # -- control ------------------------------------------------------------------------
    def on_control(self, msg: Any) -> None:
        now = time.perf_counter_ns()
        if isinstance(msg, ch.RateSet):
            if not self.closed_loop and not self.stopping:
                self.schedule.set_rate(now, msg.rate)
                self._on_due()
        elif isinstance(msg, ch.ConcurrencySet):
            if self.closed_loop and not self.stopping:
                self.concurrency = msg.concurrency
                while self._busy() < self.concurrency and not self.stopping:
                    self._start(now)
        elif isinstance(msg, ch.Paused):
            self.schedule.pause()
            self.pacer.arm(None)
            self._paused = True
        elif isinstance(msg, ch.Resumed):
            self._paused = False
            if self.closed_loop:
                while self._busy() < self.concurrency and not self.stopping:
                    self._start(now)
            else:
                self.schedule.resume(now)
                self._on_due()
        elif isinstance(msg, ch.StopRequested):
            self.request_stop("stopped", msg.cancel_in_flight)

    # -- sending ------------------------------------------------------------------------
    def _on_due(self) -> None:
        if self.stopping:
            return
        now = time.perf_counter_ns()
        # At most DUE_PER_WAKE sends per wake-up: at `--request-rate inf` (every request due
        # at once) the rest follow on the next loop turns, with their intended times kept.
        limit = DUE_PER_WAKE
        n_max = self.cfg.plan.num_requests
        if n_max is not None:
            limit = min(limit, max(n_max - self.measured_sent, 0) + 1)
        for intended in self.schedule.take_due(now, limit):
            if not self._admit(intended):
                return
        self.pacer.arm(self.schedule.next_due_ns())

    def _admit(self, intended_ns: int) -> bool:
        """Send (or queue for a slot) one scheduled request; False once the plan is done."""
        if self.stop_at_ns is not None and intended_ns >= self.stop_at_ns:
            self.request_stop("duration reached", cancel_in_flight=False)
            return False
        measured = self._measured(intended_ns)
        if self.cap and len(self.in_flight) >= self.cap:
            self.queue.append((intended_ns, measured))
        else:
            self._send(intended_ns, intended_ns, measured)
        if measured:
            self.measured_sent += 1
        return not self._check_count()

    def _measured(self, intended_ns: int) -> bool:
        measured = intended_ns >= self.measure_from_ns
        if measured and self.phase == "warmup":
            self._enter_measuring()
        return measured

    def _check_count(self) -> bool:
        """Stop sending once --num-requests measured requests have been scheduled."""
        n_max = self.cfg.plan.num_requests
        if n_max is not None and self.measured_sent >= n_max:
            self.request_stop("all requests sent", cancel_in_flight=False)
            return True
        return False

    def _start(self, intended_ns: int) -> None:
        """Closed loop: start one request now, if the plan allows another."""
        if self.stopping:
            return
        if self.stop_at_ns is not None and intended_ns >= self.stop_at_ns:
            self.request_stop("duration reached", cancel_in_flight=False)
            return
        measured = self._measured(intended_ns)
        self._send(intended_ns, intended_ns, measured)
        if measured:
            self.measured_sent += 1
        self._check_count()

    def _busy(self) -> int:
        """What the closed loop keeps at --concurrency: requests, or conversations."""
        return len(self.in_flight) if self.convs is None else self.convs.active

    def _send(self, intended_ns: int, slot_ns: int, measured: bool) -> None:
        if self.convs is not None:
            self.convs.start(intended_ns, slot_ns, measured)
            return
        ex = Exchange(intended_ns, slot_ns, measured)
        self.in_flight.add(ex)
        self.sent += 1
        if self.closed_loop and self.connect_failures:
            self._hold(ex)
        else:
            self.pool.submit(ex, self.factory.build())

    def _hold(self, ex: Exchange) -> None:
        """Closed loop after connect failures: send `ex` once its slot's backoff is over.

        It counts as in flight meanwhile (its slot is taken); a stop drops it unsent. Its
        intended time is when it is finally sent: a closed loop has no schedule to slip from.
        """

        def release() -> None:
            if ex not in self.in_flight:  # cancelled by a stop meanwhile
                return
            if self.stopping:
                self.in_flight.discard(ex)
                self._maybe_done()
                return
            ex.intended_ns = ex.slot_ns = time.perf_counter_ns()
            self.pool.submit(ex, self.factory.build())

        self.loop.call_later(connect_backoff_s(self.connect_failures), release)

    def _finished(self, ex: Exchange, rec: records.RequestRecord) -> None:
        self.in_flight.discard(ex)
        if self.convs is not None:
            rec = self.convs.finished(ex, rec)
        self.outbox.append(rec)
        if rec.error == records.CONNECT:
            self.connect_failures += 1
        elif self.connect_failures:
            self.connect_failures = 0
        if self.queue and (not self.cap or len(self.in_flight) < self.cap):
            intended, measured = self.queue.popleft()
            self._send(intended, time.perf_counter_ns(), measured)
        elif self.closed_loop and not self._paused and self._busy() < self.concurrency:
            self._start(time.perf_counter_ns())
        if self.stopping:
            self._maybe_done()

    # -- housekeeping -------------------------------------------------------------------
    def _ship(self) -> None:
        if self.outbox:
            self.ship(ch.RecordsShipped(self.outbox))
            self.outbox = []
        now = time.perf_counter_ns()
        if self.phase == "warmup" and now >= self.measure_from_ns:
            self._enter_measuring()
        if self.stop_at_ns is not None and now >= self.stop_at_ns and not self.stopping:
            self.request_stop("duration reached", cancel_in_flight=False)
        self.ship(
            ch.StatusReported(
                t_ns=now,
                sent=self.sent,
                in_flight=len(self.in_flight),
                queued=len(self.queue),
                offered_rate=self.concurrency if self.closed_loop else self.schedule.rate,
                paused=self._paused,
                phase=self.phase,
                load_cpu_s=time.process_time(),
                precise_pacer=self.pacer.precise,
                connections=len(self.pool.open),
                kernel_stamps=self.pool.rx_clock.kernel,
                user_stamps=self.pool.rx_clock.user,
                in_flight_stamps=self._in_flight_stamps(),
            )
        )

    def _in_flight_stamps(self) -> bytes:
        """(intended, send, first) of each measured request not yet finished, every 100 ms
        with the status: one pass over what is in flight, nothing per token."""
        if not self.in_flight and not self.queue:
            return b""
        out = array("q")
        for ex in self.in_flight:
            if ex.measured:
                out.extend((ex.intended_ns, ex.send_ns, ex.stream.first_ns))
        for i, (intended, measured) in enumerate(self.queue):
            if i >= 4096:  # the oldest are what a limit breaks first
                break
            if measured:
                out.extend((intended, 0, 0))
        return out.tobytes()

    def _collect(self) -> None:
        """Collect reference cycles (failed connections, exceptions) at a moment we choose.

        Automatic collection is off in the load process; only what was made since start-up
        (in-flight requests, connections) is scanned here, a fraction of a millisecond.
        """
        gc.collect()

    def _sweep(self) -> None:
        """Time out requests that took too long in all, or went quiet too long."""
        now = time.perf_counter_ns()
        total_ns = round(self.cfg.timeouts.request_s * NS_PER_S)
        read_ns = round(self.cfg.timeouts.read_s * NS_PER_S)
        for ex in list(self.in_flight):
            if ex.conn is None or not ex.send_ns:
                continue
            quiet_since = ex.last_read_ns or ex.send_ns
            if now - ex.send_ns > total_ns:
                ex.conn.fail(
                    records.TIMEOUT, f"no complete response in {self.cfg.timeouts.request_s:g} s"
                )
            elif now - quiet_since > read_ns:
                ex.conn.fail(
                    records.TIMEOUT, f"nothing received for {self.cfg.timeouts.read_s:g} s"
                )
