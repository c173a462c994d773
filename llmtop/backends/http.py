"""A lean HTTP/1.1 streaming client: asyncio.Protocol plus httptools' C parser.

aiohttp's client API costs tens of microseconds per chunk (a StreamReader, a coroutine
resumption and an await per line) and wakes the reading coroutine after the bytes arrived,
so every timestamp would be late by the time the loop gets round to it. Here the timestamp is
taken first thing in `data_received`, the only place the bytes are known to be in, and the
body goes straight from httptools (llhttp) to the SSE byte scanner, with no task per request.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import httptools

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
        )


FinishFn = Callable[["Exchange", "records.RequestRecord"], None]


class StreamConnection(asyncio.Protocol):
    """One keep-alive connection carrying one streaming exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.t_ns = 0
        self.keep_alive = True
        self.closed = False

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
        ex.last_read_ns = self.t_ns
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(records.MALFORMED, f"bad HTTP response: {exc}")
            return
        if ex.stream.done and ex.stream.error is not None and self.ex is ex:
            self.fail(ex.stream.error, ex.stream.detail)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        ex = self.ex
        if ex is not None:
            self.ex = None
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
            ex.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is None:
            return
        if ex.status == 200:
            if not ex.stream.done:
                ex.stream.feed(body, self.t_ns)
        elif len(ex.error_body) < MAX_ERROR_BODY:
            ex.error_body += body[: MAX_ERROR_BODY - len(ex.error_body)]

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        self.ex = None
        ex.end_ns = self.t_ns
        if ex.status != 200:
            rec = ex.record(records.http_error(ex.status), error_detail(ex.error_body))
        elif ex.stream.error is None and not ex.stream.done and not ex.stream.chunk_ns:
            rec = ex.record(records.STREAM_CUT, "response ended without [DONE]")
        else:
            rec = ex.record()
        if self.keep_alive and not self.closed:
            self.pool.release(self)
        else:
            self.abort()
        self.pool.finish(ex, rec)

    # -- driving ----------------------------------------------------------------------
    def send(self, ex: Exchange, request: bytes) -> None:
        self.ex = ex
        ex.conn = self
        self.transport.write(request)  # type: ignore[union-attr]

    def fail(self, kind: str, detail: str) -> None:
        """End the current exchange with an error and drop the connection."""
        ex = self.ex
        self.ex = None
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


def error_detail(body: bytes) -> str:
    """The message of an OpenAI-style error body, or its first line."""
    import json

    try:
        obj: Any = json.loads(body)
    except ValueError:
        return body[:160].decode("utf-8", "replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err
            return str(msg)[:160]
        if "detail" in obj:
            return str(obj["detail"])[:160]
        return str(err)[:160]
    return str(obj)[:160]


# Kernel receive stamps (Linux): SO_TIMESTAMPNS puts the time each packet reached the socket
# layer (CLOCK_REALTIME) on every recvmsg.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
READ_SIZE = 64 * 1024  # one buffer per pool, reused: a fresh 256 KB bytes per read is an mmap
MAX_STAMP_AGE_NS = 60 * 1_000_000_000  # older than this: a clock step, not a slow read
STAMP_SLACK_NS = 1_000_000  # later than the read itself: a clock step too


def kernel_stamps_wanted() -> bool:
    """On Linux, unless LLMTOP_RX_STAMPS=user asks for the loop's stamps (asyncio transports)."""
    return (
        sys.platform.startswith("linux")
        and _CMSG_SPACE > 0
        and os.environ.get("LLMTOP_RX_STAMPS", "kernel") != "user"
    )


class Tls:
    """TLS over a RawLink: an SSLObject between two memory BIOs (ssl's sans-I/O form), so
    the socket stays ours and every read keeps its kernel stamp."""

    __slots__ = ("incoming", "obj", "outgoing")

    def __init__(self, ctx: ssl.SSLContext, host: str) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=host)

    async def handshake(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Before the link exists; a failure (a bad certificate) is the connect's failure."""
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    await loop.sock_sendall(sock, self.outgoing.read())
                data = await loop.sock_recv(sock, READ_SIZE)
                if not data:
                    raise ConnectionResetError(
                        "the server closed the connection during TLS"
                    ) from None
                self.incoming.write(data)
        if self.outgoing.pending:
            await loop.sock_sendall(sock, self.outgoing.read())

    def decrypt(self, data: memoryview) -> tuple[bytes, bool]:
        """The application bytes in what arrived, and whether the server closed TLS."""
        self.incoming.write(data)
        parts = []
        while True:
            try:
                chunk = self.obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                return b"".join(parts), False
            except ssl.SSLZeroReturnError:
                return b"".join(parts), True
            if not chunk:
                return b"".join(parts), True
            parts.append(chunk)

    def encrypt(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.outgoing.read()


class ReceiveClock:
    """Turns the kernel's CLOCK_REALTIME receive stamps into perf_counter_ns time.

    The offset between the two clocks is re-read every 100 ms by the load loop (NTP slews
    both alike; only a step moves it). A stamp that does not fall between a minute before the
    read and the read itself is a step in between: the read's own time is used instead.
    """

    __slots__ = ("kernel", "offset_ns", "user")

    def __init__(self) -> None:
        self.offset_ns = 0
        self.kernel = 0  # reads stamped by the kernel
        self.user = 0  # reads stamped here (no stamp, or one that failed the check)
        self.refresh()

    def refresh(self) -> None:
        best = (1 << 62, 0)
        for _ in range(3):  # the tightest of three brackets
            a = time.perf_counter_ns()
            r = time.time_ns()
            b = time.perf_counter_ns()
            if b - a < best[0]:
                best = (b - a, r - (a + b) // 2)
        self.offset_ns = best[1]

    def stamp(self, ancillary: list[tuple[int, int, bytes]]) -> int:
        now = time.perf_counter_ns()
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(raw) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                t = sec * 1_000_000_000 + nsec - self.offset_ns
                if now - MAX_STAMP_AGE_NS <= t <= now + STAMP_SLACK_NS:
                    self.kernel += 1
                    return t if t < now else now
                break
        self.user += 1
        return now


class RawLink:
    """One StreamConnection's socket (TCP, TLS on top when asked), read with recvmsg to get
    the kernel's stamp.

    Why: a stamp taken in user space is taken when the loop gets round to the socket. With
    hundreds of streams, tokens that arrive together are stamped one after another, each late
    by the work done on those before it (ITL p99 +0.2–0.7 ms at 400 streams here). The kernel
    stamps each packet as it arrives, whatever the loop is busy with. Offers the two transport
    methods StreamConnection uses (write, abort) and calls its protocol methods.
    """

    __slots__ = ("buf", "clock", "closed", "fd", "loop", "pending", "proto", "sock", "tls", "view")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        proto: StreamConnection,
        clock: ReceiveClock,
        buf: bytearray,
        tls: Tls | None = None,
    ) -> None:
        self.loop = loop
        self.tls = tls
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = proto
        self.clock = clock
        self.pending = b""
        self.closed = False
        self.buf = [buf]  # shared by the pool's links: each read is copied out at once
        self.view = memoryview(buf)
        proto.connection_made(self)  # type: ignore[arg-type]
        loop.add_reader(self.fd, self._readable)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def _readable(self) -> None:
        try:
            n, ancillary, _, _ = self.sock.recvmsg_into(self.buf, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not n:  # the server closed its side
            self._lost(None)
            return
        t_ns = self.clock.stamp(ancillary)
        if self.tls is None:
            self.proto.received(self.view[:n].tobytes(), t_ns)
            return
        try:
            data, closed = self.tls.decrypt(self.view[:n])
        except ssl.SSLError as exc:
            self._lost(exc)
            return
        if data:
            self.proto.received(data, t_ns)
        if self.tls.outgoing.pending:  # TLS's own answers (a key update)
            self._send(self.tls.outgoing.read())
        if closed:
            self._lost(None)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.tls is not None:
            try:
                data = self.tls.encrypt(data)
            except ssl.SSLError as exc:
                self._lost(exc)
                return
        self._send(data)

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            self.pending += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._lost(exc)
            return
        if n < len(data):
            self.pending = data[n:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        self.pending = self.pending[n:]
        if not self.pending:
            self.loop.remove_writer(self.fd)

    def abort(self) -> None:
        self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        """Close now; tell the protocol on the next loop turn, as asyncio's transports do."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self.pending:
            self.loop.remove_writer(self.fd)
        self.sock.close()
        self.loop.call_soon(self.proto.connection_lost, exc)


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
        self._rx_buf = bytearray(READ_SIZE) if self.kernel_stamps else bytearray()

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
        error: OSError = OSError(f"no address for {self.host}")
        for family, kind, proto, addr in self._addrs:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                await self.loop.sock_connect(sock, addr)
                tls = Tls(self.ssl, self.host) if self.ssl is not None else None
                if tls is not None:
                    await tls.handshake(self.loop, sock)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            conn = StreamConnection(self)
            RawLink(self.loop, sock, conn, self.rx_clock, self._rx_buf, tls)
            return conn
        raise error

    def close(self) -> None:
        for conn in list(self.open) + self.idle:
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
