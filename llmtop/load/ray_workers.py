"""`--ray ADDRESS`: the workers as Ray actors spread over a cluster's nodes.

Each worker is a `NodeAgent` actor placed by a placement group (STRICT_SPREAD: one per node
while there are enough nodes, else SPREAD). The agent is the worker's parent on its node: it
spawns the load process there (`LoadProcess` with a `WorkerHook`: the same load loop, dealt
schedule and start barrier as `--workers`), reads its raw records on its own clock, feeds
them to its own collector, and ships interval histograms and counters (`remote.py`) each
time the llmtop parent polls it. The load loop itself never does any of this work.

When the parent needs every request (`--save-requests`), the agent ships the raw records
instead (compressed batches, times moved onto the parent's clock there) and the parent's one
collector takes them as it takes a local worker's: figures and by_turn alike. The parent says
which with its first poll, once the session knows whether it has a record sink; records that
arrive before it are kept until then.

Clocks: the start barrier is a wall-clock instant a little ahead, which every agent turns
into its own monotonic clock (on one host exact; across hosts as good as their NTP); from
then on every time is an offset from the barrier, so rate changes (and the steps they start)
land at the same point of the one schedule on every node, and the parent maps offsets onto
its own clock.

A node that dies: its actor's next poll fails; the worker is lost, what it shipped stays,
its share is dealt over the others from an agreed instant (the offered rate holds), and the
run's JSON, snapshot and UI say so (`workers_lost`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from typing import Any

import numpy as np

from llmtop.config import RunConfig
from llmtop.errors import ConfigError
from llmtop.load import channel as ch
from llmtop.load.group import SCHEDULE_CONTROLS, GroupBase, WorkerLost, process_death
from llmtop.load.hook import WorkerHook
from llmtop.load.process import LoadProcess
from llmtop.load.remote import DeltaCollector, HistogramsShipped, pack_records, unpack_records
from llmtop.load.share import (
    MembersSet,
    StartAt,
    TimedControl,
    WorkerReady,
    WorkerReported,
    split_evenly,
    worker_config,
    worker_share,
)

BARRIER_S = 1.0  # the start instant, this far ahead of the moment it is chosen
CONTROL_MARGIN_S = 0.25  # rate changes take effect this far ahead on every node
POLL_WAIT_S = 0.2  # an agent answers a poll at once when it has news, else after this
READY_TIMEOUT_S = 120.0
PLACEMENT_TIMEOUT_S = 60.0
CONNECT_TRIES = 3  # a Ray client server that fails to start a session for us: try again
CONNECT_RETRY_S = 2.0


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'llmtop[ray]'") from None
    return ray


def _address(text: str) -> str:
    return "auto" if text.strip() == "auto" else text.strip()


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """A `host:port` or `ray://host:port` that nothing answers is one line now, not minutes
    of Ray retrying to reach a cluster that is not there."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError):
        raise ConfigError(
            f"--ray {address}: nothing answers there (is the cluster up? `ray start --head` "
            "prints the address)"
        ) from None


def wall_to_local_ns(wall_ns: int, tries: int = 5) -> int:
    """A wall-clock instant on this host's perf_counter_ns clock. The two clocks are read
    as a tight pair, several times, and the pair read closest together is used: a thread
    preempted between two reads (a busy host) would otherwise shift the whole schedule of
    this node by the preemption."""
    best: tuple[int, int, int] | None = None
    for _ in range(tries):
        p1 = time.perf_counter_ns()
        w = time.time_ns()
        p2 = time.perf_counter_ns()
        if best is None or p2 - p1 < best[0]:
            best = (p2 - p1, (p1 + p2) // 2, w)
    assert best is not None
    return best[1] + (wall_ns - best[2])


class NodeAgent:
    """The worker's parent on its node (a Ray actor, made with `ray.remote` at run time)."""

    def __init__(
        self,
        config: RunConfig,
        index: int,
        count: int,
        limits_ms: dict[str, float],
    ) -> None:
        self.index = index
        self.config = worker_config(config, index, count)
        self.hook = WorkerHook(worker_share(config, index, count))
        self.dc = DeltaCollector(config.window_s, limits_ms)
        self.lock = threading.Condition()
        self.events: list[tuple[str, Any]] = []
        self.status: ch.StatusReported | None = None
        self.lags: list[bytes] = []
        self.late_controls = 0
        self.ready_info: dict[str, Any] | None = None
        self.t0_local: int | None = None
        self.start_wall_ns = 0
        self.proc: LoadProcess | None = None
        self._news = False
        self._done = False
        self.raw_mode: bool | None = None  # ship raw records? (None: the parent has not said)
        self.raw: list[Any] = []  # records kept for the parent (raw mode, or not said yet)
        # the load process is spawned by the pump thread, which lives as long as the agent:
        # its death signal (PR_SET_PDEATHSIG) is tied to the thread that spawned it
        self._thread = threading.Thread(target=self._pump, name="llmtop-agent", daemon=True)
        self._thread.start()

    # -- the pump: the load process's messages into the collector -----------------------------
    def _pump(self) -> None:
        proc = self.proc = LoadProcess(self.config, self.hook)
        proc.start()
        while not self._done:
            msgs = proc.receive(0.05)
            with self.lock:
                for msg in msgs:
                    self._take(msg)
                if proc.channel is not None and proc.channel.closed and not proc.alive:
                    self.events.append(("died", process_death(proc)["message"]))
                    self._news = True
                    self.lock.notify_all()
                    return
                if self._news:
                    self.lock.notify_all()

    def _take(self, msg: Any) -> None:
        t0 = self.t0_local or 0
        if isinstance(msg, ch.RecordsShipped):
            if self.raw_mode is False:
                self.dc.add(msg.records)
            else:
                self.raw.extend(msg.records)
        elif isinstance(msg, ch.StatusReported):
            self.status = msg
        elif isinstance(msg, WorkerReported):
            self.lags.append(msg.loop_lag_us)
            self.late_controls = msg.late_controls
        elif isinstance(msg, WorkerReady):
            self.ready_info = {
                "node": _node_id(),
                "host": socket.gethostname(),
                "pid": msg.pid,
                "agent_pid": os.getpid(),
            }
        elif isinstance(msg, ch.LoadStarted):
            self.events.append(("started", msg.t_ns - t0))
            self._news = True
        elif isinstance(msg, ch.MeasurementStarted):
            self.events.append(("measuring", msg.t_ns - t0))
            self._news = True
        elif isinstance(msg, ch.LoadStopped):
            self.events.append(("stopped", (msg.t_ns - t0, msg.reason)))
            self._news = True
        elif isinstance(msg, ch.LoadFailed):
            self.events.append(("failed", msg.message))
            self._news = True

    # -- what the parent calls ------------------------------------------------------------------
    def ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any] | None:
        """Where this worker runs, once its load process is built and waits for the barrier."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.ready_info is not None:
                    return self.ready_info
                failed = [v for k, v in self.events if k in ("failed", "died")]
                if failed:
                    return {"failed": str(failed[0])}
            time.sleep(0.02)
        return None

    def start_at(self, start_wall_ns: int, offered: float) -> int:
        """The barrier: start at this wall-clock instant, on this node's monotonic clock."""
        t_local = wall_to_local_ns(start_wall_ns)
        with self.lock:
            self.t0_local = t_local
            self.start_wall_ns = start_wall_ns
            self.dc.t0_ns = t_local
            self.dc.begin_step(t_local, offered)
        assert self.proc is not None
        self.proc.send(StartAt(t_local))
        return t_local

    def control(self, msg: Any, at_offset_ns: int | None, step: float | None = None) -> None:
        """Pass a control on; timed at `at_offset_ns` after the barrier when given, and
        begin a step (offered `step`) there, as the parent's collector does."""
        t0 = self.t0_local or time.perf_counter_ns()
        at = None if at_offset_ns is None else t0 + at_offset_ns
        if step is not None:
            with self.lock:
                self.dc.begin_step(at if at is not None else time.perf_counter_ns(), step)
        assert self.proc is not None
        self.proc.send(TimedControl(at, msg) if at is not None else msg)

    def set_limits(self, limits_ms: dict[str, float]) -> None:
        """The UI's `l`: this node's goodput judges by the new per-request limits from now."""
        with self.lock:
            self.dc.c.set_request_limits_ms(limits_ms)

    def poll(self, wait_s: float = POLL_WAIT_S, raw: bool = False) -> dict[str, Any]:
        """What happened since the last poll: figures (or raw records, when `raw`), status,
        loop lags, events."""
        with self.lock:
            if self.raw_mode is None:
                self.raw_mode = raw
                if not raw and self.raw:  # kept while the parent had not said: figures now
                    self.dc.add(self.raw)
                    self.raw = []
            if not self._news:
                self.lock.wait(wait_s)
            self._news = False
            shipped = self.dc.drain(self.index)
            records, self.raw = self.raw, []
            events, self.events = self.events, []
            lags = b"".join(self.lags)
            self.lags = []
            return {
                "shipped": shipped,
                "records": pack_records(records) if records else None,
                "t0_local": self.t0_local,
                "status": self.status,
                "lags": lags,
                "late_controls": self.late_controls,
                "events": events,
            }

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        proc = self.proc
        if proc is not None:
            if proc.alive:
                proc.send(ch.StopRequested(True))
            proc.join(timeout_s)
        self._done = True
        return True

    def pid(self) -> int:
        return os.getpid()


def _node_id() -> str:
    ray = _ray()
    return str(ray.get_runtime_context().get_node_id())


class RayWorkerGroup(GroupBase):
    """N Ray actors with the interface of one `LoadProcess`; ships figures, not records."""

    def __init__(self, config: RunConfig, n: int, address: str) -> None:
        super().__init__(config, n)
        self.address = _address(address)
        self.agents: list[Any] = []
        self.refs: dict[int, Any] = {}
        self.parent_t0_ns: int | None = None
        self.placement = ""
        self.pg: Any = None
        self._pending_out: list[Any] = []
        self._closed = False
        self._connected_here = False
        self._limits_ms: dict[str, float] = {}
        self.same_clock = False  # each node measures on its own clock
        # set by the session: whether it keeps every request (then agents ship raw records)
        self.wants_records: Any = None
        self.raw: bool | None = None

    # -- the LoadProcess interface ----------------------------------------------------------------
    @property
    def proc(self) -> Any:
        return None

    @property
    def pid(self) -> int | None:
        return self.book.accounts[0].pid if self.book.accounts else None

    @property
    def pids(self) -> list[int | None]:
        return [a.pid for a in self.book.accounts]

    @property
    def alive(self) -> bool:
        return not self._closed and bool(self.live)

    @property
    def all_closed(self) -> bool:
        return self._closed or not self.live

    @property
    def exitcode(self) -> int | None:
        return None

    def death(self) -> dict[str, Any]:
        return {"message": f"every Ray worker was lost ({len(self.lost)} of {self.n})"}

    def describe(self) -> dict[str, Any]:
        nodes = sorted({a.node for a in self.book.accounts})
        return {"ray": {"address": self.address, "placement": self.placement, "nodes": nodes}}

    @property
    def limits_ms(self) -> dict[str, float]:
        """The per-request SLO limits every node's collector counts goodput by."""
        return self._limits_ms

    @limits_ms.setter
    def limits_ms(self, limits_ms: dict[str, float]) -> None:
        self._limits_ms = dict(limits_ms)
        if self.agents and not self._closed:  # a new SLO mid-run (the UI's `l`)
            for i in self.live:
                self.agents[i].set_limits.remote(self._limits_ms)

    def _connect(self, ray: Any) -> None:
        """`ray.init`, tried again when a Ray client server answers "Initialization failure":
        its proxy starts a server process per client and gives up on it after 30 s, which a
        busy head node can exceed once and not the next time."""
        for attempt in range(1, CONNECT_TRIES + 1):
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
                self._connected_here = True
                return
            except ConnectionAbortedError as exc:
                if attempt == CONNECT_TRIES:
                    text = f"{_one_line(exc)} (tried {CONNECT_TRIES} times)"
                    raise ConfigError(f"--ray {self.address}: cannot connect: {text}") from None
                time.sleep(CONNECT_RETRY_S)
            except Exception as exc:  # ConnectionError, ValueError...: one line, not a traceback
                raise ConfigError(
                    f"--ray {self.address}: cannot connect: {_one_line(exc)}"
                ) from None

    def start(self) -> None:
        ray = _ray()
        if not ray.is_initialized():
            check_reachable(self.address)
            self._connect(ray)
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        nodes = [nd for nd in ray.nodes() if nd.get("Alive")]
        self.placement = "STRICT_SPREAD" if len(nodes) >= self.n else "SPREAD"
        self.pg = placement_group([{"CPU": 1}] * self.n, strategy=self.placement)
        try:
            ray.get(self.pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except Exception:
            raise ConfigError(
                f"--ray: the cluster cannot place {self.n} workers of 1 CPU each "
                f"({self.placement} over {len(nodes)} nodes)"
            ) from None
        agent_cls = ray.remote(num_cpus=1, max_concurrency=4, max_restarts=0)(NodeAgent)
        for i in range(self.n):
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)
            self.agents.append(
                agent_cls.options(scheduling_strategy=strategy).remote(
                    self.config, i, self.n, self.limits_ms
                )
            )
        infos = ray.get([a.ready.remote() for a in self.agents], timeout=READY_TIMEOUT_S + 10)
        for i, info in enumerate(infos):
            if info is None or "failed" in info:
                why = "no answer" if info is None else info["failed"]
                raise ConfigError(f"--ray: worker {i} did not start: {why}")
            acc = self.book.accounts[i]
            acc.node, acc.pid = info["node"], info["pid"]
        # the barrier: one wall-clock instant, turned into each node's own clock
        start_wall = time.time_ns() + round(BARRIER_S * 1e9)
        self.parent_t0_ns = wall_to_local_ns(start_wall)
        plan = self.config.plan
        ray.get(
            [
                a.start_at.remote(start_wall, float(c) if plan.closed_loop else plan.request_rate)
                for a, c in zip(self.agents, self._shares(), strict=True)
            ]
        )
        self._pending_out.append(ch.LoadStarted(self.parent_t0_ns))
        # the first polls go out from the first `receive`: by then the session has its
        # record sink (or not), which decides what the agents ship

    def _poll(self, i: int) -> None:
        self.refs[i] = self.agents[i].poll.remote(POLL_WAIT_S, bool(self.raw))

    def _shares(self) -> list[int]:
        if self.config.plan.closed_loop:
            return split_evenly(self.concurrency, self.n)
        return [0] * self.n

    def send(self, msg: Any) -> int | None:
        live = self.live
        now = time.perf_counter_ns()
        t0 = self.parent_t0_ns or now
        if isinstance(msg, ch.StopRequested):
            self.stop_sent = True
            for i in live:
                self.agents[i].control.remote(msg, None)
            return None
        if isinstance(msg, ch.ConcurrencySet):
            self.concurrency = msg.concurrency
            for i, c in zip(live, split_evenly(msg.concurrency, len(live)), strict=True):
                self.agents[i].control.remote(ch.ConcurrencySet(c), None, float(msg.concurrency))
            return now
        if isinstance(msg, SCHEDULE_CONTROLS) and not self.config.plan.closed_loop:
            at = now + round(CONTROL_MARGIN_S * 1e9)
            step = msg.rate if isinstance(msg, ch.RateSet) else None
            for i in live:
                self.agents[i].control.remote(msg, at - t0, step)
            return at
        for i in live:
            self.agents[i].control.remote(msg, None)
        return None

    def set_rate(self, rate: float) -> None:
        self.send(ch.RateSet(rate))

    def stop(self, cancel_in_flight: bool = True) -> None:
        self.send(ch.StopRequested(cancel_in_flight))

    def receive(self, timeout_s: float) -> list[Any]:
        ray = _ray()
        out, self._pending_out = self._pending_out, []
        if self.raw is None and self.agents:  # the first receive: start polling
            self.raw = bool(self.wants_records and self.wants_records())
            for i in range(self.n):
                self._poll(i)
        refs = {ref: i for i, ref in self.refs.items() if i not in self.lost}
        if not refs:
            time.sleep(timeout_s)
            self._maybe_all_stopped(out)
            return out
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        now = time.perf_counter_ns()
        status_seen = False
        records: list[Any] = []
        for ref in ready:
            i = refs[ref]
            try:
                got = ray.get(ref)
            except Exception as exc:  # the actor (its node) is gone
                self._lose(i, now, _death_text(exc), out)
                continue
            status_seen |= self._take(i, got, now, out, records)
            news = got["events"] or got["shipped"] is not None or got["records"] is not None
            if self.stopped[i] is None or news:
                self._poll(i)
            else:  # stopped and drained: nothing more will come
                del self.refs[i]
        if records:
            out.insert(0, ch.RecordsShipped(records))
        if status_seen:
            merged = self._merged_status()
            if merged is not None:
                out.append(merged)
        self._maybe_all_stopped(out)
        return out

    def _take(
        self, i: int, got: dict[str, Any], now: int, out: list[Any], records: list[Any]
    ) -> bool:
        t0 = self.parent_t0_ns or 0
        if got["records"] is not None:  # raw mode: onto this clock, into the one collector
            recs = unpack_records(got["records"], t0 - (got["t0_local"] or 0))
            self.book.records(i, recs, now)
            records.extend(recs)
        shipped: HistogramsShipped | None = got["shipped"]
        if shipped is not None:
            out.insert(0, dataclasses.replace(shipped, parent_t0_ns=t0))
            slip = shipped.slip.histogram() if shipped.slip is not None else None
            c = shipped.counts
            counts = {
                "completed": c.completed,
                "failed": c.failed,
                "cancelled": c.cancelled,
                "warmup": c.warmup,
            }
            self.book.histograms(i, slip, counts, now)
        lags = got["lags"]
        if lags or got["late_controls"]:
            self.book.lags(i, np.frombuffer(lags, dtype=np.int64), got["late_controls"], now)
        for kind, value in got["events"]:
            if kind == "measuring" and self.measuring is None:
                self.measuring = ch.MeasurementStarted(t0 + value)
                out.append(self.measuring)
            elif kind == "stopped":
                self.stopped[i] = ch.LoadStopped(t0 + value[0], value[1])
            elif kind == "failed":
                out.append(ch.LoadFailed(str(value)))
            elif kind == "died":
                self._lose(i, now, str(value), out)
        st = got["status"]
        if st is not None:
            self._on_status(i, st, now)
            return True
        return False

    def _lose(self, i: int, now: int, reason: str, out: list[Any]) -> None:
        if i in self.lost or self.stopped[i] is not None:
            return
        self.lost.add(i)
        self.book.lose(i, now, reason)
        acc = self.book.accounts[i]
        at = self._respread(now) if self.live and not self.stop_sent else None
        out.append(WorkerLost(i, acc.node, now, reason, acc.lost_in_flight, at))

    def _respread(self, now: int) -> int:
        """The lost share to the live workers, from an agreed instant on (returned)."""
        if self.config.plan.closed_loop:
            live = self.live
            for j, c in zip(live, split_evenly(self.concurrency, len(live)), strict=True):
                self.agents[j].control.remote(ch.ConcurrencySet(c), None)
            return now
        at = now + round(CONTROL_MARGIN_S * 1e9)
        t0 = self.parent_t0_ns or now
        members = tuple(self.live)
        for j in members:
            self.agents[j].control.remote(MembersSet(members), at - t0)
        return at

    def join(self, timeout_s: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        ray = _ray()
        live = [self.agents[i] for i in self.live]
        try:
            ray.get([a.shutdown.remote(timeout_s) for a in live], timeout=timeout_s + 5)
        except Exception:
            pass
        for a in self.agents:
            try:
                ray.kill(a)
            except Exception:
                pass
        if self.pg is not None:
            try:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.pg)
            except Exception:
                pass
        if self._connected_here:
            ray.shutdown()


def _death_text(exc: Exception) -> str:
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"Ray worker lost ({name}{': ' + text if text else ''})"


__all__ = ["NodeAgent", "RayWorkerGroup", "TimedControl"]


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its first line, and its last when that says more (a Ray
    client server sends "Initialization failure from server:" and then a traceback whose last
    line is the reason)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) == 1 or not lines[0].endswith(":"):
        return lines[0]
    return f"{lines[0]} {lines[-1]}"
