"""A lean HTTP/1.1 streaming client: a keep-alive pool, httptools' C parser, the SSE scanner.

aiohttp's client API costs tens of microseconds per chunk (a StreamReader, a coroutine
resumption and an await per line) and wakes the reading coroutine after the bytes arrived,
so every timestamp would be late by the time the loop gets round to it. Here the timestamp is
taken first thing in `data_received`, the only place the bytes are known to be in, and the
body goes straight from httptools (llhttp) to the SSE byte scanner, with no task per request.
On Linux the bytes come from a `llmtop.backends.link.RawLink` with the kernel's receive stamp.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import httptools

from llmtop.backends.link import RawLink, ReceiveClock, connect_raw, kernel_stamps_wanted
from llmtop.backends.sse import StreamState
from llmtop.metrics import records

MAX_ERROR_BODY = 2048


class Exchange:
    """One request in flight: its schedule times and the state of its response stream."""

    __slots__ = (
        "conn",
        "deadline_ns",
        "end_ns",
        "error_body",
        "intended_ns",
        "last_read_ns",
        "measured",
        "request",
        "retried",
        "send_ns",
        "slot_ns",
        "status",
        "stream",
    )

    def __init__(self, intended_ns: int, slot_ns: int, measured: bool) -> None:
        self.intended_ns = intended_ns
        self.slot_ns = slot_ns
        self.send_ns = 0
        self.end_ns = 0
        self.last_read_ns = 0
        self.deadline_ns = 0
        self.measured = measured
        self.status = 0
        self.stream = StreamState()
        self.error_body = b""
        self.conn: StreamConnection | None = None
        self.request = b""
        self.retried = False

    def record(self, error: str | None = None, detail: str = "") -> records.RequestRecord:
        s = self.stream
        if error is None:
            error, detail = s.error, s.detail
        return records.RequestRecord(
            self.intended_ns,
            self.slot_ns,
            self.send_ns,
            s.first_ns,
            s.last_ns,
            self.end_ns,
            s.prompt_tokens,
            s.output_tokens,
            s.chunk_ns.tobytes(),
            s.chunk_tokens.tobytes(),
            error,
            detail,
            self.measured,
            s.cached_tokens,
        )


FinishFn = Callable[["Exchange", "records.RequestRecord"], None]


def _no_sink(body: bytes, t_ns: int) -> None:
    """Body bytes with no exchange to take them (between responses): dropped."""


class StreamConnection(asyncio.Protocol):
    """One keep-alive connection carrying one streaming exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.feed_data = self.parser.feed_data  # bound once: called on every read
        self.ex: Exchange | None = None
        # Where this response's body goes: its stream's parser for a 200, else the error
        # body; chosen once per response when its head is complete.
        self.sink: Callable[[bytes, int], None] = _no_sink
        self.t_ns = 0
        self.keep_alive = True
        self.closed = False
        self.served = 0  # exchanges finished on this connection: > 0 means it sat idle

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.pool.rx_clock.user += 1  # an asyncio transport: the loop's stamp
        self.received(data, time.perf_counter_ns())

    def received(self, data: bytes, t_ns: int) -> None:
        """Bytes that arrived at `t_ns` (the kernel's stamp on a RawLink, else the loop's)."""
        self.t_ns = t_ns
        ex = self.ex
        if ex is None:  # bytes with nothing asked: the server is confused; drop the link
            self.abort()
            return
        ex.last_read_ns = t_ns
        try:
            self.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(records.MALFORMED, f"bad HTTP response: {exc}")
            return
        st = ex.stream
        if st.done and st.error is not None and self.ex is ex:
            self.fail(st.error, st.detail)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        ex = self.ex
        if ex is not None:
            self.ex = None
            self.sink = _no_sink
            if not ex.last_read_ns and self.served and not ex.retried:
                # A reused connection the server closed before answering: it closed it as
                # idle (uvicorn after 5 s) while our request was on its way. Nothing of the
                # response came, so sending again on a fresh connection is safe; once.
                self.pool.retry(ex)
                return
            if ex.stream.done and ex.status == 200:  # [DONE] seen; the close is harmless
                ex.end_ns = time.perf_counter_ns()
                self.pool.finish(ex, ex.record())
            else:
                ex.end_ns = time.perf_counter_ns()
                what = "connection closed" + (f": {exc}" if exc else "")
                kind = records.STREAM_CUT
                if ex.status and ex.status != 200:
                    kind = records.http_error(ex.status)
                self.pool.finish(ex, ex.record(kind, what))

    # -- httptools callbacks ----------------------------------------------------------
    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.status = status = self.parser.get_status_code()
            self.sink = ex.stream.feed if status == 200 else self._error_body
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.sink(body, self.t_ns)

    def _error_body(self, body: bytes, t_ns: int) -> None:
        """A non-200 answer's body: its first MAX_ERROR_BODY bytes, for the error's detail."""
        ex = self.ex
        if ex is not None and len(ex.error_body) < MAX_ERROR_BODY:
            ex.error_body += body[: MAX_ERROR_BODY - len(ex.error_body)]

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        self.ex = None
        self.sink = _no_sink
        ex.end_ns = self.t_ns
        if ex.status != 200:
            rec = ex.record(records.http_error(ex.status), error_detail(ex.error_body))
        elif ex.stream.error is None and not ex.stream.done and not ex.stream.chunk_ns:
            rec = ex.record(records.STREAM_CUT, "response ended without [DONE]")
        else:
            rec = ex.record()
        if self.keep_alive and not self.closed:
            self.served += 1
            self.pool.release(self)
        else:
            self.abort()
        self.pool.finish(ex, rec)

    # -- driving ----------------------------------------------------------------------
    def send(self, ex: Exchange, request: bytes) -> None:
        self.ex = ex
        ex.conn = self
        ex.request = request
        self.transport.write(request)  # type: ignore[union-attr]

    def fail(self, kind: str, detail: str) -> None:
        """End the current exchange with an error and drop the connection."""
        ex = self.ex
        self.ex = None
        self.sink = _no_sink
        self.abort()
        if ex is not None:
            ex.end_ns = time.perf_counter_ns()
            self.pool.finish(ex, ex.record(kind, detail))

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.abort()


def client_error_cause(exc: BaseException) -> str:
    """A one-line cause for an aiohttp client error, fit for a terminal and a log.

    Never the exception's repr (it carries the request's headers, Authorization included) nor
    its str (the URL, which may hold credentials, and raw server bytes over several lines).
    """
    import aiohttp

    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({_os_reason(exc.os_error)})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "a broken response body"
    if isinstance(exc, aiohttp.InvalidURL):
        return "an invalid URL"
    if isinstance(exc, aiohttp.ClientResponseError):
        msg = str(exc.message)
        if "status line" in msg:
            return "a malformed HTTP status line"
        if "Got more than" in msg or "too long" in msg.lower():
            return "an oversized response header"
        if exc.status >= 400 and exc.status != 400:
            return f"HTTP {exc.status}"
        first = msg.split(":", 1)[0].splitlines()[0] if msg else ""
        return "a bad HTTP response" + (f" ({_printable(first)[:60]})" if first else "")
    if isinstance(exc, OSError):
        return _os_reason(exc)
    return type(exc).__name__


def _os_reason(exc: OSError) -> str:
    return _printable(exc.strerror or type(exc).__name__)


def _printable(text: str) -> str:
    """No control characters (a server's escape sequences) and one line."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


def error_detail(body: bytes) -> str:
    """The message of an OpenAI-style error body, or its first line: one printable line."""
    return _printable(_error_message(body))[:160]


def _error_message(body: bytes) -> str:
    import json

    try:
        obj: Any = json.loads(body)
    except (ValueError, RecursionError):
        return body[:160].decode("utf-8", "replace")
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err
            return str(msg)[:160]
        if "detail" in obj:
            return str(obj["detail"])[:160]
        return str(err)[:160]
    return str(obj)[:160]


class ConnectionPool:
    """Idle keep-alive connections to one endpoint; a new one is opened when none is idle."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        use_ssl: bool,
        connect_timeout_s: float,
        finish: FinishFn,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if use_ssl else None
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[StreamConnection] = []
        self.open: set[StreamConnection] = set()
        self.connecting = 0
        self._finish = finish
        self._tasks: set[asyncio.Task[None]] = set()
        self.kernel_stamps = kernel_stamps_wanted()
        self.rx_clock = ReceiveClock()
        self._addrs: list[Any] | None = None
        self.retries = 0  # requests sent again after a reused connection closed unanswered

    def finish(self, ex: Exchange, rec: records.RequestRecord) -> None:
        self._finish(ex, rec)

    def release(self, conn: StreamConnection) -> None:
        self.idle.append(conn)

    def forget(self, conn: StreamConnection) -> None:
        self.open.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def submit(self, ex: Exchange, request: bytes) -> None:
        """Send now on an idle connection, or open one (its connect time counts in TTFT)."""
        ex.send_ns = time.perf_counter_ns()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.send(ex, request)
                return
        task = self.loop.create_task(self._connect_and_send(ex, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retry(self, ex: Exchange) -> None:
        """Send `ex` again on a fresh connection (its last one closed before any answer).

        The request's send time becomes the retry's: TTFT and E2E are those of the attempt
        that was answered, the connect included, as for any request that opens a connection;
        the failed attempt shows in the send slip (actual minus intended send) instead.
        """
        self.retries += 1
        ex.retried = True
        ex.conn = None  # connecting: a stop drops it from the in-flight set, as for any connect
        ex.send_ns = time.perf_counter_ns()
        task = self.loop.create_task(self._connect_and_send(ex, ex.request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_and_send(self, ex: Exchange, request: bytes) -> None:
        self.connecting += 1
        try:
            conn = await asyncio.wait_for(self._open(), self.connect_timeout_s)
        except TimeoutError:
            ex.end_ns = time.perf_counter_ns()
            self._finish(
                ex, ex.record(records.CONNECT, f"connect timed out to {self.host}:{self.port}")
            )
            return
        except OSError as exc:
            ex.end_ns = time.perf_counter_ns()
            reason = exc.strerror or str(exc)
            self._finish(ex, ex.record(records.CONNECT, f"{self.host}:{self.port}: {reason}"))
            return
        finally:
            self.connecting -= 1
        self.open.add(conn)
        conn.send(ex, request)

    async def _open(self) -> StreamConnection:
        if not self.kernel_stamps:
            _, conn = await self.loop.create_connection(
                lambda: StreamConnection(self), self.host, self.port, ssl=self.ssl
            )
            return conn
        if self._addrs is None:
            infos = await self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addrs = [(i[0], i[1], i[2], i[4]) for i in infos]
        sock, tls = await connect_raw(self.loop, self._addrs, self.ssl, self.host)
        conn = StreamConnection(self)
        RawLink(self.loop, sock, conn, self.rx_clock, tls)
        return conn

    def close(self) -> None:
        for conn in list(self.open) + self.idle:
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
