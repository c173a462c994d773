"""The raw socket under a streaming connection: kernel receive stamps, TLS, the receive clock.

Why a socket of our own instead of an asyncio transport: a stamp taken in user space is taken
when the loop gets round to the socket. With hundreds of streams, tokens that arrive together
are stamped one after another, each late by the work done on those before it. On Linux
`SO_TIMESTAMPNS` puts on every `recvmsg` the time its last packet reached the socket layer;
`ReceiveClock` turns that CLOCK_REALTIME stamp into `perf_counter_ns` time. HTTPS rides on the
same socket through `ssl`'s memory BIOs (`Tls`), so decrypted bytes keep the read's stamp.

This module knows nothing of HTTP: `RawLink` hands bytes and their stamp to a `LinkUser`
(`llmtop.backends.http.StreamConnection`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import sys
import time
from typing import Any, Protocol

# Kernel receive stamps (Linux): SO_TIMESTAMPNS puts the time each packet reached the socket
# layer (CLOCK_REALTIME) on every recvmsg.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")
_unpack_timespec = _TIMESPEC.unpack_from
_perf_ns = time.perf_counter_ns
_SOL_SOCKET = socket.SOL_SOCKET
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
# At most this much per read: below glibc's mmap threshold (128 KiB), so the fresh bytes that
# recvmsg makes per read is a plain malloc, shrunk in place to what was read.
READ_SIZE = 64 * 1024
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
        """The perf_counter_ns time of a read whose recvmsg gave `ancillary`.

        `RawLink._readable` does the same inline (a call per token is measurable).
        """
        now = _perf_ns()
        if ancillary:
            level, kind, raw = ancillary[0]  # SO_TIMESTAMPNS is the only cmsg we turn on
            if kind == SCM_TIMESTAMPNS and level == _SOL_SOCKET and len(raw) >= 16:
                sec, nsec = _unpack_timespec(raw)
                t = sec * 1_000_000_000 + nsec - self.offset_ns
                if now - MAX_STAMP_AGE_NS <= t <= now + STAMP_SLACK_NS:
                    self.kernel += 1
                    return t if t < now else now
        self.user += 1
        return now


class LinkUser(Protocol):
    """What a RawLink drives: asyncio.Protocol's calls, plus bytes with their stamp."""

    def connection_made(self, transport: Any) -> None: ...

    def received(self, data: bytes, t_ns: int) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class RawLink:
    """One StreamConnection's socket (TCP, TLS on top when asked), read with recvmsg to get
    the kernel's stamp.

    Why: a stamp taken in user space is taken when the loop gets round to the socket. With
    hundreds of streams, tokens that arrive together are stamped one after another, each late
    by the work done on those before it (ITL p99 +0.2–0.7 ms at 400 streams here). The kernel
    stamps each packet as it arrives, whatever the loop is busy with. Offers the two transport
    methods StreamConnection uses (write, abort) and calls its protocol methods.
    """

    __slots__ = ("clock", "closed", "fd", "loop", "pending", "proto", "received", "sock", "tls")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        proto: LinkUser,
        clock: ReceiveClock,
        tls: Tls | None = None,
    ) -> None:
        self.loop = loop
        self.tls = tls
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = proto
        self.received = proto.received  # bound once: called on every read
        self.clock = clock
        self.pending = b""
        self.closed = False
        proto.connection_made(self)
        loop.add_reader(self.fd, self._readable)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def _readable(self) -> None:
        """One read: its bytes and the kernel's stamp of its last packet, to the protocol.

        The hot path of the whole tool (one call per streamed token): `recvmsg` into a fresh
        bytes (cheaper than reading into a shared buffer and copying out) and the stamp's
        conversion inline (`ReceiveClock.stamp` is the same, as a method).
        """
        try:
            data, ancillary, _, _ = self.sock.recvmsg(READ_SIZE, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:  # the server closed its side
            self._lost(None)
            return
        clock = self.clock
        now = _perf_ns()
        if ancillary:
            level, kind, raw = ancillary[0]
            if kind == SCM_TIMESTAMPNS and level == _SOL_SOCKET and len(raw) >= 16:
                sec, nsec = _unpack_timespec(raw)
                t_ns = sec * 1_000_000_000 + nsec - clock.offset_ns
                if now - MAX_STAMP_AGE_NS <= t_ns <= now + STAMP_SLACK_NS:
                    clock.kernel += 1
                    if t_ns > now:
                        t_ns = now
                else:
                    clock.user += 1
                    t_ns = now
            else:
                clock.user += 1
                t_ns = now
        else:
            clock.user += 1
            t_ns = now
        if self.tls is None:
            self.received(data, t_ns)
            return
        try:
            data, closed = self.tls.decrypt(data)
        except ssl.SSLError as exc:
            self._lost(exc)
            return
        if data:
            self.received(data, t_ns)
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


async def connect_raw(
    loop: asyncio.AbstractEventLoop,
    addrs: list[tuple[Any, ...]],
    ctx: ssl.SSLContext | None,
    host: str,
) -> tuple[socket.socket, Tls | None]:
    """A connected non-blocking socket with receive stamps on (and TLS done when `ctx`).

    Tries each (family, type, proto, address) in turn; raises the last OSError. A failed TLS
    handshake (a bad certificate) is an OSError too: it is the connect's failure.
    """
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, addr in addrs:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await loop.sock_connect(sock, addr)
            tls = Tls(ctx, host) if ctx is not None else None
            if tls is not None:
                await tls.handshake(loop, sock)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock, tls
    raise error
