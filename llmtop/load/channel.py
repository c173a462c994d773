"""Length-prefixed pickled messages between the parent and the load process.

The child writes through an asyncio transport (never blocks its loop, whatever the parent is
doing); the parent reads with a plain blocking socket from whichever thread collects.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmtop.metrics.records import RequestRecord

_LEN = struct.Struct("!I")


# -- messages: child → parent (past events) ------------------------------------------
@dataclass(frozen=True)
class RecordsShipped:
    records: list[RequestRecord]


@dataclass(frozen=True)
class StatusReported:
    t_ns: int
    sent: int
    in_flight: int
    queued: int
    offered_rate: float
    paused: bool
    phase: str  # "warmup" | "measuring" | "draining"
    load_cpu_s: float
    precise_pacer: bool
    connections: int
    kernel_stamps: int = 0  # reads stamped by the kernel (SO_TIMESTAMPNS)
    user_stamps: int = 0  # reads stamped by the loop (TLS, not Linux, or a failed check)
    # measured requests in flight or queued for a slot: array('q') of (intended, send, first)
    # triples (send 0 while queued, first 0 before the first token): TTFT live at the first
    # token, and requests waiting past a limit counted before they end (issue 11)
    in_flight_stamps: bytes = b""


@dataclass(frozen=True)
class LoadStarted:
    """The load loop's first moment: step 0 starts here, not when the parent spawned it."""

    t_ns: int


@dataclass(frozen=True)
class MeasurementStarted:
    t_ns: int


@dataclass(frozen=True)
class LoadStopped:
    t_ns: int
    reason: str


@dataclass(frozen=True)
class LoadFailed:
    message: str


# -- messages: parent → child (requests) ------------------------------------------------
@dataclass(frozen=True)
class RateSet:
    rate: float


@dataclass(frozen=True)
class ConcurrencySet:
    concurrency: int


@dataclass(frozen=True)
class Paused:
    pass


@dataclass(frozen=True)
class Resumed:
    pass


@dataclass(frozen=True)
class StopRequested:
    cancel_in_flight: bool = True


def encode(msg: Any) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


@dataclass
class FrameDecoder:
    """Splits a byte stream into messages."""

    buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Any]:
        self.buf += data
        out: list[Any] = []
        while len(self.buf) >= 4:
            (n,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + n:
                break
            out.append(pickle.loads(bytes(self.buf[4 : 4 + n])))
            del self.buf[: 4 + n]
        return out


class ChildChannel(asyncio.Protocol):
    """The child's end: non-blocking writes, control messages handed to a callback."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for msg in self._decoder.feed(data):
            self._on_message(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost()

    def send(self, msg: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(msg))


class ParentChannel:
    """The parent's end: blocking socket, messages read with a timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._pending: list[Any] = []
        self.closed = False
        self.send_failed = False

    def send(self, msg: Any) -> None:
        """Send to the load process; a dead peer is found by `receive`, not here: a send that
        fails (EPIPE: the process just exited) must not drop the messages still unread."""
        try:
            self.sock.sendall(encode(msg))
        except OSError:
            self.send_failed = True

    def receive(self, timeout_s: float) -> list[Any]:
        """Every message available within `timeout_s` (possibly none)."""
        if self._pending:
            out, self._pending = self._pending, []
            return out
        if self.closed:
            return []
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            return []
        except OSError:
            self.closed = True
            return []
        if not data:
            self.closed = True
            return []
        return self._decoder.feed(data)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
