"""A scripted-timing, OpenAI-compatible streaming server for tests and benchmarks.

Why it exists: llmtop's selling point is numbers you can trust, and the only way to check a
client's TTFT/ITL is against a server that knows exactly when it did what. This server emits
tokens on a script (TTFT, then one token every ITL) and records, with ``perf_counter_ns``, when
it received each request and when it wrote each chunk. A client's error is then its own
figure minus the server's (``GET /script/stats``).

It must stay cheap per token so that it is never the bottleneck it is meant to expose: one
timer (a Linux ``timerfd`` when available, otherwise a loop timer) drives every stream from a
heap of deadlines, chunk bytes are pre-encoded per response shape, and chunks go straight to
``transport.write``. Emission lateness (actual write minus scheduled) is recorded separately,
since it is the server's doing and not a client error.

Wire shapes follow vLLM's OpenAI server (``stream_options.continuous_usage_stats`` puts
``usage`` on every chunk; a final usage chunk with ``choices: []``; ``data: [DONE]``; chunked
transfer encoding; keep-alive).

Run standalone::

    python -m tests.support.scripted_server --port 0 --ttft-ms 50 --itl-ms 10

which prints one JSON line ``{"url": ..., "pid": ...}`` once it is listening. In-process, use
:class:`ScriptedServer` (``await server.start()`` on a running loop, or ``start_in_thread()``).

Faults, per request with the header ``x-script-fault: SPEC`` or server-wide (``--fault SPEC``,
applied to every ``--fault-every``-th streaming request). SPEC is one of: ``status=CODE`` (an
HTTP error with a JSON body), ``cut=N`` (close the connection after N tokens), ``malformed=N``
(a malformed SSE line after N tokens, then the stream goes on), ``error_event=N`` (a
``data: {"error": ...}`` event after N tokens, then ``[DONE]``), ``stall=N`` (N tokens, then
nothing, connection kept open), ``hang`` (never answer at all), ``flood=MB`` (one token,
then MB MiB of an SSE event that never ends - no blank line - written as fast as the client
reads, then the connection is closed: what a broken or hostile server can do to a client's
buffer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import heapq
import json
import os
import signal
import sys
import threading
import time
from array import array
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

_now = time.perf_counter_ns
_MODEL_CREATED = int(time.time())


# --------------------------------------------------------------------------------------------
# Precise timer: one Linux timerfd armed on CLOCK_MONOTONIC (what perf_counter_ns reads here).
# Event-loop timers (asyncio's and uvloop's) round to a millisecond; a timerfd wakes within
# the kernel's timer slack (~50 µs).
# --------------------------------------------------------------------------------------------


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


def _load_libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    if time.get_clock_info("perf_counter").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


class TimerFd:
    """A one-shot absolute timer on a loop, backed by a timerfd (precise) or ``call_at``.

    ``arm(deadline_ns)`` (perf_counter_ns clock) replaces any earlier arming; the callback
    runs once the deadline has passed. Only one pending deadline at a time: callers keep their
    own heap and re-arm with the earliest deadline.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, callback: Any, precise: bool = True
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._fd = -1
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        if precise and _LIBC is not None:
            fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                loop.add_reader(fd, self._on_readable)
        self.armed_ns = 0

    @property
    def precise(self) -> bool:
        """True when backed by a timerfd."""
        return self._fd >= 0

    def arm(self, deadline_ns: int) -> None:
        """Fire once at ``deadline_ns`` (at once if it has passed)."""
        self.armed_ns = deadline_ns
        if self._fd >= 0:
            deadline_ns = max(deadline_ns, 1)
            self._spec.it_value.tv_sec = deadline_ns // 1_000_000_000
            self._spec.it_value.tv_nsec = deadline_ns % 1_000_000_000
            _LIBC.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_ref, None)
            return
        if self._handle is not None:
            self._handle.cancel()
        delay = (deadline_ns - _now()) / 1e9
        self._handle = self._loop.call_at(self._loop.time() + delay, self._fire)

    def disarm(self) -> None:
        """Cancel the pending deadline."""
        self.armed_ns = 0
        if self._fd >= 0:
            self._spec.it_value.tv_sec = 0
            self._spec.it_value.tv_nsec = 0
            _LIBC.timerfd_settime(self._fd, 0, self._spec_ref, None)
        elif self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """Release the fd."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        elif self._handle is not None:
            self._handle.cancel()

    def _on_readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        self.armed_ns = 0
        self._callback()

    def _fire(self) -> None:
        self._handle = None
        self.armed_ns = 0
        self._callback()


# --------------------------------------------------------------------------------------------
# Script, faults and statistics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected failure; see the module docstring for the SPEC syntax."""

    kind: str
    n: int = 0

    KINDS = ("status", "cut", "malformed", "error_event", "stall", "hang", "flood")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse ``kind`` or ``kind=N``; raise ValueError on anything else."""
        kind, _, value = spec.strip().partition("=")
        kind = kind.strip().lower()
        if kind not in cls.KINDS:
            raise ValueError(f"unknown fault {spec!r}; one of {', '.join(cls.KINDS)}")
        if kind == "hang":
            return cls("hang")
        if not value.strip().isdigit():
            raise ValueError(f"fault {spec!r} needs =N")
        return cls(kind, int(value))


@dataclass(frozen=True)
class Script:
    """What the server does for every streaming request."""

    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    tokens: int = 200  # when the request gives no max_tokens
    honor_max_tokens: bool = True
    slots: int | None = None  # generation slots; requests beyond wait in a FIFO queue
    tokens_per_chunk: int = 1  # after the first chunk (which carries one token)
    fault: str | None = None  # server-wide fault SPEC
    fault_every: int = 1  # apply the server-wide fault to every n-th streaming request
    role_chunk: str = "with_first"  # chat role-only chunk: "with_first" (vLLM) or "early"
    model: str = "scripted"
    max_model_len: int = 8192
    precise_timer: bool = True


def summarize_ns(values_ns: array, scale: float = 1e-6) -> dict[str, float | int | None]:
    """Percentiles (nearest rank, like HDR's value-at-percentile) of ns values, in ms."""
    if len(values_ns) == 0:
        return {
            "count": 0,
            "min": None,
            "p50": None,
            "p90": None,
            "p99": None,
            "p99.9": None,
            "mean": None,
            "max": None,
        }
    a = np.frombuffer(values_ns, dtype=np.int64)
    qs = np.percentile(a, [50, 90, 99, 99.9], method="inverted_cdf")
    return {
        "count": int(a.size),
        "min": float(a.min()) * scale,
        "p50": float(qs[0]) * scale,
        "p90": float(qs[1]) * scale,
        "p99": float(qs[2]) * scale,
        "p99.9": float(qs[3]) * scale,
        "mean": float(a.mean()) * scale,
        "max": float(a.max()) * scale,
    }


@dataclass
class Stats:
    """What the server did, for the requests received inside the recording window.

    The window is everything since the last reset, or, when armed with ``warmup_s`` /
    ``duration_s``, the requests received in [first request + warmup, + duration): a client
    that counts the requests it *sent* in its own measured window then compares like with like.
    """

    ttft_ns: array = field(default_factory=lambda: array("q"))
    itl_ns: array = field(default_factory=lambda: array("q"))
    late_ns: array = field(default_factory=lambda: array("q"))
    queue_ns: array = field(default_factory=lambda: array("q"))
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    faulted: int = 0
    tokens: int = 0
    chunks: int = 0
    started_ns: int = field(default_factory=_now)
    window_start_ns: int = 0
    window_end_ns: int = 2**63 - 1
    arm_warmup_ns: int | None = None
    arm_duration_ns: int | None = None
    match_tokens: int | None = None
    # (receive time, prompt tokens, tokens asked) of each request in the window, in order
    arrivals: list[tuple[int, int, int]] = field(default_factory=list)

    def in_window(self, recv_ns: int, tokens: int) -> bool:
        """Whether a request received at ``recv_ns`` counts; the first one fixes an armed window.

        With ``match_tokens`` set, only requests for exactly that many tokens count (and arm
        the window): a client's short probe requests before its load starts are not the load.
        """
        if self.match_tokens is not None and tokens != self.match_tokens:
            return False
        if self.arm_warmup_ns is not None:
            self.window_start_ns = recv_ns + self.arm_warmup_ns
            if self.arm_duration_ns is not None:
                self.window_end_ns = self.window_start_ns + self.arm_duration_ns
            self.arm_warmup_ns = None
        return self.window_start_ns <= recv_ns < self.window_end_ns

    def summary(self) -> dict[str, Any]:
        """The JSON body of ``GET /script/stats``."""
        return {
            "requests": self.requests,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "faulted": self.faulted,
            "tokens": self.tokens,
            "chunks": self.chunks,
            "ttft_ms": summarize_ns(self.ttft_ns),
            "itl_ms": summarize_ns(self.itl_ns),
            "lateness_ms": summarize_ns(self.late_ns),
            "queue_ms": summarize_ns(self.queue_ns),
            "armed": self.arm_warmup_ns is not None,
            "window_start_ns": self.window_start_ns,
            "window_end_ns": self.window_end_ns,
        }


# --------------------------------------------------------------------------------------------
# Pre-encoded response bytes
# --------------------------------------------------------------------------------------------

_SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"server: scripted\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n"
    b"\r\n"
)
_END = b"0\r\n\r\n"
_FLOOD_PIECE = 64 * 1024
# A flood: an event that starts like a token chunk and never ends. Lines end, blank lines
# never come, so no SSE parser can find an event boundary in it.
_FLOOD_HEAD = b'data: {"id":"cmpl-flood","choices":[{"index":0,"text":"'
_FLOOD_BODY = b"x" * (_FLOOD_PIECE - 1) + b"\n"


def _frame(obj: Any) -> bytes:
    """One SSE event as one HTTP chunk (the way uvicorn frames each yielded body piece)."""
    data = obj if isinstance(obj, bytes) else b"data: " + _dumps(obj) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json_response(status: int, obj: Any, reason: str = "") -> bytes:
    body = _dumps(obj)
    reason = reason or _REASONS.get(status, "Error")
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    return head % (status, reason.encode(), len(body)) + body


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = {
        400: "BadRequestError",
        401: "AuthenticationError",
        404: "NotFoundError",
        429: "RateLimitError",
    }.get(status, "InternalServerError")
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


@dataclass(frozen=True)
class _Shape:
    """Pre-encoded chunks of one response shape: chunk i carries ``sizes[i]`` tokens."""

    role: bytes  # chat role-only chunk (b"" for completions)
    chunks: tuple[bytes, ...]  # last one includes the usage chunk, [DONE] and the terminator
    sizes: tuple[int, ...]
    content: tuple[bytes, ...]  # content chunk frames alone (for faults mid-stream)
    tail: bytes  # usage chunk + [DONE] + terminator


def _build_shape(chat: bool, model: str, prompt_tokens: int, total: int, k: int) -> _Shape:
    sizes = [1] if total >= 1 else []
    left = total - 1
    while left > 0:
        m = min(k, left)
        sizes.append(m)
        left -= m
    rid = f"{'chatcmpl' if chat else 'cmpl'}-scripted-{prompt_tokens}-{total}"
    base: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": _MODEL_CREATED,
        "model": model,
    }

    def usage(n: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + n,
            "completion_tokens": n,
        }

    role = b""
    if chat:
        choice0 = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        role = _frame({**base, "choices": [choice0], "usage": usage(0)})
    content: list[bytes] = []
    n = 0
    for i, m in enumerate(sizes):
        n += m
        text = "tok" + " tok" * (m - 1) if i == 0 else " tok" * m
        finish = "length" if i == len(sizes) - 1 else None
        if chat:
            choice = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        content.append(_frame({**base, "choices": [choice], "usage": usage(n)}))
    tail = _frame({**base, "choices": [], "usage": usage(n)}) + _frame(b"data: [DONE]\n\n") + _END
    chunks = list(content)
    if chunks:
        chunks[-1] = chunks[-1] + tail
    return _Shape(role, tuple(chunks), tuple(sizes), tuple(content), tail)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _Stream:
    """One streaming response in flight (plain attributes: touched on every token)."""

    __slots__ = (
        "conn",
        "deadline",
        "fault",
        "flood_left",
        "i",
        "last_ns",
        "recv_ns",
        "shape",
        "slot",
        "start_ns",
        "state",
        "stats",
    )

    def __init__(
        self, conn: _Conn, shape: _Shape, recv_ns: int, stats: Stats | None, fault: Fault | None
    ) -> None:
        self.conn = conn
        self.shape = shape
        self.recv_ns = recv_ns
        self.stats = stats  # where this request records (None: outside the window)
        self.fault = fault
        self.flood_left = 0  # bytes of a flood still to write
        self.i = 0  # next chunk index
        self.deadline = 0
        self.last_ns = 0
        self.start_ns = 0
        self.slot = False
        self.state = 0  # 0 running, 1 done, 2 cancelled


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: a small request parser; keep-alive; one request at a time."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.stream: _Stream | None = None
        self.busy = False  # a response is being produced; later requests wait in buf
        self.closed = False
        self.paused = False  # the transport's buffer is full (a flood waits for the reader)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._conns.discard(self)
        if self.stream is not None and self.stream.state == 0:
            self.server._cancel(self.stream)
        self.stream = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        st = self.stream
        if st is not None and st.flood_left > 0:
            self.server._flood(st)

    def data_received(self, data: bytes) -> None:
        recv_ns = _now()
        self.buf += data
        if not self.busy:
            self._process(recv_ns)

    def _process(self, recv_ns: int) -> None:
        while not self.busy and not self.closed:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                self._reply(_json_response(400, _error_body(400, "bad request line")), close=True)
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            self.busy = True
            self.server._handle(self, method, target, headers, body, recv_ns)

    def _reply(self, data: bytes, close: bool = False) -> None:
        """Write a complete response, then go on with any pipelined request."""
        if self.closed or self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()
            self.closed = True
            return
        self.done()

    def done(self) -> None:
        """The current response is finished: parse the next request if one is buffered."""
        self.busy = False
        self.stream = None
        if self.buf and not self.closed:
            self._process(_now())


class ScriptedServer:
    """The scripted streaming server; see the module docstring."""

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1", port: int = 0):
        self.script = script or Script()
        self.host = host
        self.port = port
        self.stats = Stats()
        self._ttft_ns = int(self.script.ttft_ms * 1e6)
        self._itl_ns = int(self.script.itl_ms * 1e6)
        self._fault = Fault.parse(self.script.fault) if self.script.fault else None
        self._stream_count = 0
        self._shapes: dict[tuple[bool, int, int], _Shape] = {}
        self._heap: list[tuple[int, int, _Stream]] = []
        self._seq = 0
        self._ticking = False
        self._free_slots = self.script.slots if self.script.slots else None
        self._waiting: deque[_Stream] = deque()
        self._running = 0
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._timer: TimerFd | None = None
        self._thread: threading.Thread | None = None
        self._generation_tokens_total = 0

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> ScriptedServer:
        """Listen on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._timer = TimerFd(self._loop, self._tick, precise=self.script.precise_timer)
        self._server = await self._loop.create_server(
            lambda: _Conn(self), self.host, self.port, backlog=4096, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def start_in_thread(self, use_uvloop: bool = True) -> ScriptedServer:
        """Run on a fresh event loop in a daemon thread; returns once listening."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            set_timer_slack()
            loop = _new_loop(use_uvloop)
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="scripted-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    def reset(
        self,
        warmup_s: float | None = None,
        duration_s: float | None = None,
        match_tokens: int | None = None,
    ) -> None:
        """Forget what was recorded; optionally arm a window relative to the next request."""
        self.stats = Stats(match_tokens=match_tokens)
        if warmup_s is not None:
            self.stats.arm_warmup_ns = int(warmup_s * 1e9)
            if duration_s is not None:
                self.stats.arm_duration_ns = int(duration_s * 1e9)
        self._stream_count = 0

    # ---- request handling ------------------------------------------------------------------

    def _handle(
        self,
        conn: _Conn,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        recv_ns: int,
    ) -> None:
        parts = urlsplit(target)
        path = parts.path
        if path in ("/v1/completions", "/v1/chat/completions"):
            if method != "POST":
                conn._reply(_json_response(405, _error_body(405, "use POST")))
                return
            self._generate(conn, path.endswith("chat/completions"), headers, body, recv_ns)
        elif path == "/v1/models":
            conn._reply(_json_response(200, self._models()))
        elif path == "/health":
            conn._reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        elif path == "/script/stats":
            conn._reply(_json_response(200, self._stats_body()))
        elif path == "/script/arrivals":  # [[receive ns, prompt tokens, tokens asked], ...]
            conn._reply(_json_response(200, {"arrivals": self.stats.arrivals}))
        elif path == "/script/reset":
            q = parse_qs(parts.query)
            warm = float(q["warmup_s"][0]) if "warmup_s" in q else None
            dur = float(q["duration_s"][0]) if "duration_s" in q else None
            tokens = int(q["tokens"][0]) if "tokens" in q else None
            self.reset(warm, dur, tokens)
            conn._reply(_json_response(200, {"reset": True, "warmup_s": warm, "duration_s": dur}))
        elif path == "/tokenize":
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                req = {}
            n = _count_prompt(req.get("prompt", req.get("messages", "")))
            conn._reply(
                _json_response(
                    200,
                    {
                        "count": n,
                        "max_model_len": self.script.max_model_len,
                        "tokens": list(range(n)),
                    },
                )
            )
        elif path == "/metrics":
            text = (
                f'vllm:num_requests_running{{model_name="{self.script.model}"}} {self._running}\n'
                f'vllm:num_requests_waiting{{model_name="{self.script.model}"}} '
                f"{len(self._waiting)}\n"
                f'vllm:generation_tokens_total{{model_name="{self.script.model}"}} '
                f"{self._generation_tokens_total}\n"
            ).encode()
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n"
            conn._reply(head % len(text) + text)
        else:
            conn._reply(_json_response(404, _error_body(404, f"no route {path}")))

    def _models(self) -> dict[str, Any]:
        m = self.script.model
        return {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": _MODEL_CREATED,
                    "owned_by": "llmtop",
                    "root": m,
                    "parent": None,
                    "max_model_len": self.script.max_model_len,
                }
            ],
        }

    def _stats_body(self) -> dict[str, Any]:
        body = self.stats.summary()
        body["script"] = asdict(self.script)
        body["timer"] = "timerfd" if self._timer is not None and self._timer.precise else "loop"
        body["running"] = self._running
        body["waiting"] = len(self._waiting)
        return body

    def _generate(
        self, conn: _Conn, chat: bool, headers: dict[str, str], body: bytes, recv_ns: int
    ) -> None:
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("body is not an object")
        except ValueError as exc:
            conn._reply(_json_response(400, _error_body(400, f"invalid JSON: {exc}")))
            return
        model = req.get("model")
        if model is not None and model != self.script.model:
            msg = f"The model `{model}` does not exist."
            conn._reply(_json_response(404, _error_body(404, msg)))
            return
        fault: Fault | None = None
        spec = headers.get("x-script-fault")
        try:
            if spec:
                fault = Fault.parse(spec)
        except ValueError as exc:
            conn._reply(_json_response(400, _error_body(400, str(exc))))
            return
        self._stream_count += 1
        every = max(1, self.script.fault_every)
        if fault is None and self._fault is not None and self._stream_count % every == 0:
            fault = self._fault
        total = self.script.tokens
        max_tokens = req.get("max_completion_tokens") if chat else None
        max_tokens = max_tokens or req.get("max_tokens")
        if self.script.honor_max_tokens and isinstance(max_tokens, int) and max_tokens > 0:
            total = max_tokens
        rec = self.stats.in_window(recv_ns, total)
        if rec:
            self.stats.requests += 1
            prompt_in = req.get("messages") if chat else req.get("prompt")
            self.stats.arrivals.append((recv_ns, _count_prompt(prompt_in), total))
            if fault is not None:
                self.stats.faulted += 1
        if fault is not None and fault.kind == "status":
            conn._reply(_json_response(fault.n, _error_body(fault.n, "scripted fault")))
            return
        if fault is not None and fault.kind == "hang":
            return  # never answer; the connection stays busy until the client gives up
        prompt = req.get("messages") if chat else req.get("prompt")
        shape = self._shape(chat, _count_prompt(prompt), total)
        if not req.get("stream"):
            self._non_streaming(conn, chat, shape, total, recv_ns, rec)
            return
        st = _Stream(conn, shape, recv_ns, self.stats if rec else None, fault)
        conn.stream = st
        assert conn.transport is not None
        conn.transport.write(
            _SSE_HEADERS + (shape.role if self.script.role_chunk == "early" else b"")
        )
        if self._free_slots is not None:
            if self._free_slots == 0:
                self._waiting.append(st)
                return
            self._free_slots -= 1
            st.slot = True
        self._begin(st, recv_ns)

    def _begin(self, st: _Stream, now: int) -> None:
        st.start_ns = now
        if st.stats is not None and st.slot:
            st.stats.queue_ns.append(now - st.recv_ns)
        self._running += 1
        self._push(st, now + self._ttft_ns)

    def _shape(self, chat: bool, prompt_tokens: int, total: int) -> _Shape:
        key = (chat, prompt_tokens, total)
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) > 256:
                self._shapes.clear()
            shape = _build_shape(
                chat, self.script.model, prompt_tokens, total, max(1, self.script.tokens_per_chunk)
            )
            self._shapes[key] = shape
        return shape

    def _non_streaming(
        self, conn: _Conn, chat: bool, shape: _Shape, total: int, recv_ns: int, rec: bool
    ) -> None:
        delay = (self._ttft_ns + self._itl_ns * max(0, total - 1)) / 1e9
        text = "tok" + " tok" * (total - 1) if total else ""
        choice: dict[str, Any] = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
            if chat
            else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        )
        usage = {"prompt_tokens": 0, "total_tokens": total, "completion_tokens": total}
        body = {
            "id": "cmpl-scripted",
            "object": "chat.completion" if chat else "text_completion",
            "created": _MODEL_CREATED,
            "model": self.script.model,
            "choices": [choice],
            "usage": usage,
        }

        def finish() -> None:
            if rec:
                self.stats.completed += 1
                self.stats.tokens += total
            conn._reply(_json_response(200, body))

        assert self._loop is not None
        self._loop.call_later(delay, finish)

    # ---- the ticker: one timer, a heap of deadlines ----------------------------------------

    def _push(self, st: _Stream, deadline: int) -> None:
        st.deadline = deadline
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, st))
        timer = self._timer
        if (
            not self._ticking
            and timer is not None
            and (timer.armed_ns == 0 or deadline < timer.armed_ns)
        ):
            timer.arm(deadline)

    def _tick(self) -> None:
        heap = self._heap
        pop = heapq.heappop
        now = _now()
        self._ticking = True
        try:
            while heap and heap[0][0] <= now:
                st = pop(heap)[2]
                if st.state == 0:
                    self._emit(st)
                now = _now()
        finally:
            self._ticking = False
        if heap and self._timer is not None:
            self._timer.arm(heap[0][0])

    def _emit(self, st: _Stream) -> None:
        """Write chunk ``st.i`` of ``st`` and schedule the next one."""
        conn = st.conn
        transport = conn.transport
        if conn.closed or transport is None:
            self._cancel(st)
            return
        shape = st.shape
        i = st.i
        fault = st.fault
        if (
            fault is not None
            and fault.kind != "status"
            and i >= (1 if fault.kind == "flood" else fault.n)
        ):
            self._apply_fault(st)
            return
        data = shape.chunks[i]
        if i == 0 and st.shape.role and self.script.role_chunk != "early":
            data = shape.role + data
        t = _now()
        transport.write(data)
        m = shape.sizes[i]
        s = st.stats
        if s is not None:
            s.chunks += 1
            s.tokens += m
            s.late_ns.append(t - st.deadline)
            if i == 0:
                s.ttft_ns.append(t - st.recv_ns)
            else:
                gap = (t - st.last_ns) // m
                if m == 1:
                    s.itl_ns.append(gap)
                else:
                    s.itl_ns.extend([gap] * m)
        self._generation_tokens_total += m
        st.last_ns = t
        st.i = i = i + 1
        if i < len(shape.chunks):
            self._push(st, st.deadline + self._itl_ns * shape.sizes[i])
        else:
            st.state = 1
            if s is not None:
                s.completed += 1
            self._release(st)
            conn.done()

    def _apply_fault(self, st: _Stream) -> None:
        """The stream reached its fault point: cut, stall, or inject a bad event."""
        fault = st.fault
        assert fault is not None
        conn = st.conn
        transport = conn.transport
        assert transport is not None
        if fault.kind == "cut":
            st.state = 1
            self._release(st)
            transport.close()
            conn.closed = True
        elif fault.kind == "stall":
            st.state = 1  # stop emitting; the connection stays open and busy
            self._release(st)
        elif fault.kind == "error_event":
            st.state = 1
            err = {"error": _error_body(500, "scripted mid-stream error")}
            transport.write(_frame(err) + _frame(b"data: [DONE]\n\n") + _END)
            self._release(st)
            conn.done()
        elif fault.kind == "malformed":
            st.fault = None  # once; then the stream goes on where it was
            transport.write(_frame(b'data: {"id":"cmpl-bad","choices":[{"text":\n\n'))
            self._emit(st)
        elif fault.kind == "flood":
            st.state = 1  # no more tokens; the slot is free, the connection busy
            self._release(st)
            st.flood_left = fault.n * 1024 * 1024
            transport.write(_frame(_FLOOD_HEAD))
            self._flood(st)

    def _flood(self, st: _Stream) -> None:
        """Write the flood while the client keeps reading (the transport's flow control)."""
        conn = st.conn
        transport = conn.transport
        while st.flood_left > 0 and not conn.paused and not conn.closed and transport:
            n = min(_FLOOD_PIECE, st.flood_left)
            transport.write(b"%x\r\n%s\r\n" % (n, _FLOOD_BODY[-n:]))
            st.flood_left -= n
        if st.flood_left <= 0 and not conn.closed and transport is not None:
            transport.close()  # the whole flood went out and still no end: give up
            conn.closed = True

    def _cancel(self, st: _Stream) -> None:
        if st.state != 0:
            return
        st.state = 2
        if st.stats is not None:
            st.stats.cancelled += 1
        if st in self._waiting:
            self._waiting.remove(st)
            return
        self._release(st)

    def _release(self, st: _Stream) -> None:
        """Free the stream's generation slot and start the next queued request, FIFO."""
        if st.start_ns:
            self._running -= 1
        if not st.slot:
            return
        st.slot = False
        while self._waiting:
            nxt = self._waiting.popleft()
            if nxt.state == 0 and not nxt.conn.closed:
                nxt.slot = True
                self._begin(nxt, _now())
                return
        assert self._free_slots is not None
        self._free_slots += 1


def _count_prompt(prompt: Any) -> int:
    """Prompt tokens as the server would count them (token ids exactly, text by words)."""
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], dict):  # chat messages
            return sum(_count_prompt(m.get("content", "")) for m in prompt)
        if prompt and isinstance(prompt[0], list):
            return len(prompt[0])
        if prompt and isinstance(prompt[0], str):
            return _count_prompt(prompt[0])
        return len(prompt)
    if isinstance(prompt, str):
        return len(prompt.split())
    return 0


def set_timer_slack(ns: int = 1000) -> None:
    """Shrink this thread's timer slack (default 50 µs) so timerfd wake-ups land closer."""
    if _LIBC is not None:
        with contextlib.suppress(Exception):
            _LIBC.prctl(29, ns, 0, 0, 0)  # PR_SET_TIMERSLACK


def raise_fd_limit() -> None:
    """Hundreds of streams need hundreds of sockets: lift the soft fd limit to the hard one."""
    with contextlib.suppress(Exception):
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=200, help="when the request has no max_tokens")
    p.add_argument("--ignore-max-tokens", action="store_true")
    p.add_argument("--slots", type=int, default=None, help="generation slots (FIFO queue beyond)")
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--fault", default=None, help="server-wide fault SPEC")
    p.add_argument("--fault-every", type=int, default=1)
    p.add_argument("--role-chunk", choices=["with_first", "early"], default="with_first")
    p.add_argument("--model", default="scripted")
    p.add_argument("--timer", choices=["timerfd", "loop"], default="timerfd")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    args = p.parse_args(argv)
    if args.fault:
        Fault.parse(args.fault)
    return args


def main(argv: list[str] | None = None) -> None:
    """CLI entry: serve until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    set_timer_slack()
    raise_fd_limit()
    script = Script(
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        tokens=args.tokens,
        honor_max_tokens=not args.ignore_max_tokens,
        slots=args.slots,
        tokens_per_chunk=args.tokens_per_chunk,
        fault=args.fault,
        fault_every=args.fault_every,
        role_chunk=args.role_chunk,
        model=args.model,
        precise_timer=args.timer == "timerfd",
    )
    loop = _new_loop(not args.no_uvloop)
    asyncio.set_event_loop(loop)
    server = ScriptedServer(script, args.host, args.port)
    loop.run_until_complete(server.start())
    gc.freeze()  # startup objects out of the collector's way: no long gen-2 pauses mid-run
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, loop.stop)
    timer = "timerfd" if server._timer is not None and server._timer.precise else "loop"
    print(
        json.dumps(
            {"url": server.url, "pid": os.getpid(), "timer": timer, "loop": type(loop).__module__}
        ),
        flush=True,
    )
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(server.stop())
        loop.close()


if __name__ == "__main__":
    main()
