"""The floor: the leanest asyncio client that can measure TTFT and ITL of a streaming server.

Why it exists: "llmtop's error is X ms" means little without knowing what any client on the
same machine could do. This client does only what measurement needs: open-loop Poisson
arrivals, one ``asyncio.Protocol`` per connection (keep-alive pool by default), a
``perf_counter_ns`` stamp at the top of ``data_received``, and a byte scan for the last
``"completion_tokens":`` of each batch of complete SSE events (so a chunk carrying k tokens
gives k ITL samples of gap/k). No JSON, no HTTP library, no per-token objects.

It prints its TTFT/ITL errors against the scripted server's own records (``--compare``) and
its CPU µs per streamed token. ``--pacer`` picks how arrivals are timed: ``timerfd`` (precise,
Linux), ``call_at`` (an event-loop timer) or ``sleep`` (``asyncio.sleep`` in a loop): the last
two show why a load generator needs a precise timer at high rates.

    python benchmarks/floor_client.py --url http://127.0.0.1:PORT --rate 196 --duration 20 \
        --warmup 3 --compare
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.scripted_server import (
    TimerFd,
    raise_fd_limit,
    set_timer_slack,
    summarize_ns,
)

_now = time.perf_counter_ns
_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')
_TERMINATOR = b"\r\n0\r\n\r\n"


@dataclass(frozen=True)
class FloorConfig:
    """One open-loop run."""

    url: str
    rate: float
    duration: float
    warmup: float = 0.0
    output_len: int = 200
    input_len: int = 32
    api: str = "completions"
    keep_alive: bool = True
    pacer: str = "timerfd"
    seed: int = 0
    drain_timeout: float = 30.0


class _Conn(asyncio.Protocol):
    """One connection carrying one request at a time; the measuring hot path lives here."""

    __slots__ = (
        "buf",
        "client",
        "closed",
        "first_ns",
        "headers_done",
        "intended_ns",
        "last_ns",
        "rec",
        "start_ns",
        "tail",
        "tokens",
        "transport",
    )

    def __init__(self, client: Floor) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.buf = b""
        self.tail = b""
        self.headers_done = False
        self.start_ns = 0
        self.intended_ns = 0
        self.first_ns = 0
        self.last_ns = 0
        self.tokens = 0
        self.rec = False

    def send(self, intended_ns: int, rec: bool) -> None:
        """Write the request now (the connection is open and idle)."""
        self.intended_ns = intended_ns
        self.rec = rec
        self.start_ns = t = _now()
        assert self.transport is not None
        self.transport.write(self.client.request_bytes)
        self.client.sent(self, t)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # A request was waiting for this connection: its start stamp (taken before connect)
        # stays, so TTFT includes the connect, as a user of a fresh client would see.
        transport.write(self.client.request_bytes)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        t = _now()
        if not self.headers_done:
            data = self.buf + data
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            self.buf = b""
            status = data[9:12]
            if status != b"200":
                self._fail(f"http_{status.decode('latin-1')}")
                return
            self.headers_done = True
            data = data[end + 4 :]
        buf = self.tail + data if self.tail else data
        end = buf.rfind(b"\n\n")
        if end >= 0:
            self.tail = buf[end + 2 :]
            j = buf.rfind(b'"completion_tokens":', 0, end)
            if j >= 0:
                m = _TOKENS.match(buf, j)
                if m is not None:
                    n = int(m.group(1))
                    k = n - self.tokens
                    if k > 0:
                        self.tokens = n
                        if self.first_ns == 0:
                            self.first_ns = t
                            if self.rec:
                                self.client.ttft.append(t - self.start_ns)
                        elif self.rec:
                            gap = t - self.last_ns
                            if k == 1:
                                self.client.itl.append(gap)
                            else:
                                self.client.itl.extend([gap // k] * k)
                        self.last_ns = t
        else:
            self.tail = buf
        if buf.endswith(_TERMINATOR):
            self.client.finished(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.start_ns:
            self._fail("stream_cut" if self.headers_done else "connection")

    def _fail(self, kind: str) -> None:
        self.client.failed(self, kind)
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True


class Floor:
    """An open-loop run against one URL; :meth:`run` returns the results dict."""

    def __init__(self, cfg: FloorConfig, model: str) -> None:
        self.cfg = cfg
        parts = urlsplit(cfg.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        chat = cfg.api == "chat"
        path = "/v1/chat/completions" if chat else "/v1/completions"
        ids = [(i * 7919) % 1000 + 1 for i in range(cfg.input_len)]
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": cfg.output_len,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        if chat:
            body["messages"] = [{"role": "user", "content": " ".join(["hi"] * cfg.input_len)}]
        else:
            body["prompt"] = ids
        raw = json.dumps(body, separators=(",", ":")).encode()
        self.request_bytes = (
            b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % (path.encode(), self.host.encode(), self.port, len(raw))
        ) + raw
        self.ttft = array("q")
        self.itl = array("q")
        self.slip = array("q")
        self.idle: list[_Conn] = []
        self.in_flight = 0
        self.completed = 0
        self.errors: dict[str, int] = {}
        self.tokens_total = 0
        self.tokens_window = 0
        self.sent_total = 0
        self.opened = 0
        self.rng = random.Random(cfg.seed)
        self.sending_done = False
        self._all_done: asyncio.Event | None = None

    # ---- bookkeeping, called from the connections ----------------------------------------

    def sent(self, conn: _Conn, t: int) -> None:
        self.sent_total += 1
        if conn.rec:
            self.slip.append(t - conn.intended_ns)

    def finished(self, conn: _Conn) -> None:
        self.in_flight -= 1
        self.tokens_total += conn.tokens
        if conn.rec:
            self.completed += 1
            self.tokens_window += conn.tokens
        conn._reset()
        if self.cfg.keep_alive:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        self._check_done()

    def failed(self, conn: _Conn, kind: str) -> None:
        self.in_flight -= 1
        self.tokens_total += conn.tokens
        if conn.rec:
            self.errors[kind] = self.errors.get(kind, 0) + 1
        conn._reset()
        self._check_done()

    def _check_done(self) -> None:
        if self.sending_done and self.in_flight == 0 and self._all_done is not None:
            self._all_done.set()

    # ---- sending --------------------------------------------------------------------------

    def _send(self, intended_ns: int, rec: bool) -> None:
        self.in_flight += 1
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.send(intended_ns, rec)
                return
        self.opened += 1
        conn = _Conn(self)
        conn.intended_ns = intended_ns
        conn.rec = rec
        conn.start_ns = t = _now()
        self.sent(conn, t)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: conn, self.host, self.port))
        task.add_done_callback(lambda f, c=conn: self._connected(f, c))

    def _connected(self, fut: asyncio.Future[Any], conn: _Conn) -> None:
        if fut.cancelled() or fut.exception() is not None:
            conn.closed = True
            self.failed(conn, "connection")

    async def run(self) -> dict[str, Any]:
        """Send for warmup + duration, then wait for the streams in flight to finish."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self._all_done = asyncio.Event()
        rate = cfg.rate
        t0 = _now() + 20_000_000
        win_start = t0 + int(cfg.warmup * 1e9)
        end = win_start + int(cfg.duration * 1e9)
        nxt = t0
        expo = self.rng.expovariate
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = _now()

        def fire() -> None:
            nonlocal nxt
            now = _now()
            while nxt <= now:
                if nxt >= end:
                    self.sending_done = True
                    self._check_done()
                    return
                self._send(nxt, nxt >= win_start)
                nxt += int(expo(rate) * 1e9)
                now = _now()
            timer.arm(nxt)

        if cfg.pacer == "sleep":
            while nxt < end:
                delay = (nxt - _now()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
                now = _now()
                while nxt <= now and nxt < end:
                    self._send(nxt, nxt >= win_start)
                    nxt += int(expo(rate) * 1e9)
            self.sending_done = True
            self._check_done()
            timer = None
        else:
            timer = TimerFd(loop, fire, precise=cfg.pacer == "timerfd")
            timer.arm(nxt)
        try:
            await asyncio.wait_for(self._all_done.wait(), cfg.warmup + cfg.duration + 60.0)
            drained = True
        except TimeoutError:
            drained = False
        wall = (_now() - wall0) / 1e9
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        if timer is not None:
            timer.close()
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        # Whole-process CPU (imports included) divided by the measured window's tokens: the
        # same definition llmtop's JSON gives (load_cpu_s / output_tokens).
        load_cpu = time.process_time()
        return {
            "client": "floor",
            "pacer": "call_at" if timer is not None and not timer.precise else cfg.pacer,
            "ttft_ms": summarize_ns(self.ttft),
            "itl_ms": summarize_ns(self.itl),
            "send_slip_ms": summarize_ns(self.slip),
            "completed": self.completed,
            "failed": sum(self.errors.values()),
            "errors": self.errors,
            "output_tokens": self.tokens_window,
            "output_tokens_all": self.tokens_total,
            "sent_all": self.sent_total,
            "connections_opened": self.opened,
            "duration_s": cfg.duration,
            "wall_s": wall,
            "load_cpu_s": load_cpu,
            "run_cpu_s": cpu,
            "cpu_us_per_token": load_cpu * 1e6 / self.tokens_window if self.tokens_window else None,
            "run_cpu_us_per_token_all": cpu * 1e6 / self.tokens_total
            if self.tokens_total
            else None,
            "drained": drained,
            "config": cfg.__dict__,
        }


def http_json(url: str, method: str = "GET", timeout: float = 30.0) -> Any:
    """A blocking JSON request (control calls only, never on the measured path)."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def first_model(url: str) -> str:
    """The first model the server lists."""
    return http_json(url.rstrip("/") + "/v1/models")["data"][0]["id"]


def run_floor(cfg: FloorConfig) -> dict[str, Any]:
    """Run on a fresh loop (uvloop when installed) and return the results."""
    model = first_model(cfg.url)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(Floor(cfg, model).run())
    finally:
        loop.close()


# --------------------------------------------------------------------------------------------
# Harness helpers shared by the benchmarks (they import this module)
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """The scripted server in its own process, pinned to one core; a context manager."""

    def __init__(self, cpu: int | None = 0, priority: str = "normal", **script: Any) -> None:
        cmd = [sys.executable, "-m", "tests.support.scripted_server", "--port", "0"]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        for key, value in script.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, preexec_fn=pin(cpu, priority)
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise RuntimeError(f"scripted server did not start: {' '.join(cmd)}")
        info = json.loads(line)
        self.url: str = info["url"]
        self.pid: int = info["pid"]
        self.timer: str = info["timer"]

    def arm(self, warmup_s: float, duration_s: float, tokens: int) -> None:
        """Record only requests for ``tokens`` tokens received in [first + warmup, + duration).

        That is the client's measured window; ``tokens`` keeps a client's probe requests (sent
        before its load starts) from starting the window early.
        """
        q = f"warmup_s={warmup_s}&duration_s={duration_s}&tokens={tokens}"
        http_json(f"{self.url}/script/reset?{q}", "POST")

    def stats(self) -> dict[str, Any]:
        """What the server says it did."""
        return http_json(f"{self.url}/script/stats")

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far."""
        return proc_cpu_s(self.pid)

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process, from /proc (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_times() -> dict[str, tuple[float, float]]:
    """(busy, total) jiffies per line of /proc/stat ("cpu", "cpu0", ...)."""
    out: dict[str, tuple[float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *vals = line.split()
        v = [float(x) for x in vals]
        idle = v[3] + v[4]
        out[name] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


class StallMonitor:
    """Detects whole-machine stalls: a thread that sleeps 5 ms and notes how late it wakes.

    Measured on the shared 2-vCPU machine: while other people's jobs ran, a nice -20 process
    sleeping 1 ms woke 100-260 ms late on both cores at the same instant — the VM itself was
    not running. No client can measure through that, so a run that saw such a stall is
    flagged (and retried by the benchmarks) instead of being reported as the tool's error.
    """

    def __init__(self, threshold_ms: float = 20.0) -> None:
        self.threshold_ms = threshold_ms
        self.stalls: list[float] = []
        self.worst_ms = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # At nice -20 (where allowed) this thread measures the machine, not its own queueing
        # behind other people's nice-0 work.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -20)
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(0.005)
            late_ms = (time.perf_counter() - t - 0.005) * 1e3
            self.worst_ms = max(self.worst_ms, late_ms)
            if late_ms > self.threshold_ms:
                self.stalls.append(late_ms)

    def stop(self) -> dict[str, Any]:
        """Stop; the stalls seen (count over the threshold and the worst, in ms)."""
        self._stop.set()
        self._thread.join(1)
        return {"count": len(self.stalls), "worst_ms": round(self.worst_ms, 1)}


class MachineLoad:
    """How busy the machine was around a measurement: the benchmarks share their cores.

    ``report()`` gives the 1-minute load average at the start, the CPU pressure (PSI
    some avg10), per-core busy % over the interval, the CPU seconds of processes that are
    neither the server nor the client ("others"), and the machine stalls seen.
    """

    def __init__(self) -> None:
        self.load1 = os.getloadavg()[0]
        self.psi = psi_cpu_some10()
        self.t0 = cpu_times()
        self.wall0 = time.monotonic()
        self.monitor = StallMonitor()

    def report(self, ours_cpu_s: float) -> dict[str, Any]:
        """Close the interval; ``ours_cpu_s`` is the server's plus the client's CPU seconds."""
        stalls = self.monitor.stop()
        t1 = cpu_times()
        wall = time.monotonic() - self.wall0
        tick = os.sysconf("SC_CLK_TCK")
        busy = {k: (t1[k][0] - self.t0[k][0]) / max(t1[k][1] - self.t0[k][1], 1) for k in t1}
        total_busy_s = (t1["cpu"][0] - self.t0["cpu"][0]) / tick
        return {
            "load1_before": round(self.load1, 2),
            "psi_cpu_some10_before": self.psi,
            "busy_pct": {k: round(100 * v, 1) for k, v in busy.items() if k != "cpu"},
            "others_cpu_pct": round(100 * max(total_busy_s - ours_cpu_s, 0.0) / wall, 1),
            "stalls_over_20ms": stalls["count"],
            "worst_stall_ms": stalls["worst_ms"],
            "wall_s": round(wall, 1),
        }


def psi_cpu_some10() -> float | None:
    """CPU pressure: % of the last 10 s some runnable task waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.split()[1].split("=")[1])


def wait_quiet(max_wait_s: float, busy_below: float = 0.15) -> float:
    """Wait (at most ``max_wait_s``) for a second with the machine under ``busy_below`` busy."""
    t_end = time.monotonic() + max_wait_s
    while True:
        a = cpu_times()["cpu"]
        time.sleep(1.0)
        b = cpu_times()["cpu"]
        frac = (b[0] - a[0]) / max(b[1] - a[1], 1)
        if frac < busy_below or time.monotonic() >= t_end:
            return frac


def llmtop_command() -> list[str]:
    """``python -m llmtop`` run from the repository root: the checkout is what gets measured."""
    return [sys.executable, "-m", "llmtop"]


PRIORITIES = ("normal", "nice", "rt")


def pin(cpu: int | None, priority: str = "normal") -> Any:
    """A preexec_fn that pins a child (and what it spawns) to one core, at a priority.

    ``nice`` is nice -20; ``rt`` is SCHED_FIFO 10. Both only matter on a machine others are
    using: they keep other people's processes from preempting the server or the client in the
    middle of a measurement. Children inherit both (llmtop's spawned load process included).
    """

    def setup() -> None:
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(PermissionError):  # without the right, run as is
            if priority == "nice":
                os.setpriority(os.PRIO_PROCESS, 0, -20)
            elif priority == "rt":
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))

    return setup


def run_child(
    cmd: list[str],
    cpu: int | None,
    timeout: float,
    priority: str = "normal",
    parent_nice: int | None = None,
) -> tuple[int, str, float]:
    """Run a client process pinned to ``cpu``; (returncode, stderr tail, CPU s of its tree).

    ``parent_nice`` (a diagnostic): once the client has spawned its load process, put the
    client's own top process at this nice (and back to SCHED_OTHER under ``rt``), so that on
    the shared core it can no longer delay the load process, which keeps ``priority``.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        preexec_fn=pin(cpu, priority),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if parent_nice is not None:
        threading.Thread(target=_renice_parent, args=(proc, parent_nice), daemon=True).start()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.returncode, (err or "")[-2000:], cpu_s


def _renice_parent(proc: subprocess.Popen[str], nice: int) -> None:
    import psutil

    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            kids = psutil.Process(proc.pid).children()
            if any("spawn_main" in " ".join(k.cmdline()) for k in kids):
                if os.sched_getscheduler(proc.pid) != os.SCHED_OTHER:  # from --priority rt
                    os.sched_setscheduler(proc.pid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
                return
        time.sleep(0.05)


def errors_vs_server(client: dict[str, Any], server: dict[str, Any]) -> dict[str, float | None]:
    """Client percentile minus the server's own percentile, in ms."""

    def diff(metric: str, q: str) -> float | None:
        c, s = client.get(metric, {}).get(q), server.get(metric, {}).get(q)
        return None if c is None or s is None else c - s

    return {
        "ttft_p50": diff("ttft_ms", "p50"),
        "ttft_p99": diff("ttft_ms", "p99"),
        "itl_p50": diff("itl_ms", "p50"),
        "itl_p99": diff("itl_ms", "p99"),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="req/s, Poisson")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds sent but not measured")
    p.add_argument("--output-len", type=int, default=200)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--api", choices=["completions", "chat"], default="completions")
    p.add_argument("--no-keep-alive", action="store_true", help="one connection per request")
    p.add_argument("--pacer", choices=["timerfd", "call_at", "sleep"], default="timerfd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", type=int, default=None, help="pin to this core")
    p.add_argument("--compare", action="store_true", help="arm the scripted server, compare")
    p.add_argument("--json", default=None, help="write results here")
    a = p.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    set_timer_slack()
    raise_fd_limit()
    gc.freeze()  # startup objects out of the collector's way: no long gen-2 pauses mid-run
    cfg = FloorConfig(
        url=a.url.rstrip("/"),
        rate=a.rate,
        duration=a.duration,
        warmup=a.warmup,
        output_len=a.output_len,
        input_len=a.input_len,
        api=a.api,
        keep_alive=not a.no_keep_alive,
        pacer=a.pacer,
        seed=a.seed,
    )
    if a.compare:
        q = f"warmup_s={cfg.warmup}&duration_s={cfg.duration}&tokens={cfg.output_len}"
        http_json(f"{cfg.url}/script/reset?{q}", "POST")
    res = run_floor(cfg)
    if a.compare:
        res["server"] = http_json(f"{cfg.url}/script/stats")
        res["error_ms"] = errors_vs_server(res, res["server"])
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    out = {
        k: res[k]
        for k in (
            "completed",
            "failed",
            "errors",
            "output_tokens",
            "load_cpu_s",
            "cpu_us_per_token",
            "drained",
        )
    }
    for k in ("ttft_ms", "itl_ms", "send_slip_ms"):
        out[k] = {q: res[k][q] for q in ("p50", "p99", "max")}
    if a.compare:
        out["server_ttft_ms"] = {q: res["server"]["ttft_ms"][q] for q in ("p50", "p99")}
        out["server_itl_ms"] = {q: res["server"]["itl_ms"][q] for q in ("p50", "p99")}
        out["server_lateness_ms"] = {q: res["server"]["lateness_ms"][q] for q in ("p50", "p99")}
        out["error_ms"] = res["error_ms"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
