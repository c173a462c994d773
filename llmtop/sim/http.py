"""The simulator's HTTP/1.1 connection: httptools parsing on an asyncio.Protocol.

A lean protocol rather than aiohttp (see docs/sim.md): whole responses are one
`transport.write`, streams get their head here and their chunks from `llmtop.sim.wire`.
What to do with a parsed request is the server's business (`SimServer.dispatch`).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

if TYPE_CHECKING:
    from llmtop.sim.scheduler import SimRequest
    from llmtop.sim.server import SimServer

SIM_HEADER = b"x-llmtop-sim: 1\r\n"
MAX_HEADER_BYTES = 64 * 1024  # request line + headers; more is a 431
MAX_BODY_BYTES = 8 * 1024 * 1024  # a full 8k-token conversation is well under 1 MiB
MAX_PIPELINED = 32  # queued requests per connection before we stop reading from it
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """An error answered as the engines do: {"object": "error", "message", "type", "code"}."""

    def __init__(self, status: int, message: str, etype: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype

    def body(self) -> dict[str, Any]:
        return {
            "object": "error",
            "message": self.message,
            "type": self.etype,
            "param": None,
            "code": self.status,
        }


class Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: parse with httptools, dispatch, keep alive.

    Pipelined requests are answered in order: while a response is still being produced
    (`active`, a stream or a deferred answer) later requests wait in `pending`, and past
    MAX_PIPELINED of them the connection stops reading. Oversized headers (431) or bodies
    (413) are answered in turn, then the connection closes.
    """

    __slots__ = (
        "_body",
        "_body_bytes",
        "_head_bytes",
        "_headers",
        "_too_large",
        "_url",
        "active",
        "closed",
        "max_body_bytes",
        "max_header_bytes",
        "parser",
        "paused",
        "pending",
        "rejected",
        "server",
        "transport",
    )

    def __init__(
        self,
        server: SimServer,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._url = b""
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._head_bytes = 0
        self._body_bytes = 0
        self._too_large: ApiError | None = None
        self.active: SimRequest | None = None
        # (method, path, body, keep-alive), or an ApiError to answer and close on
        self.pending: deque[tuple[bytes, str, bytes, bool] | ApiError] = deque()
        self.paused = False
        self.rejected = False
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pending.clear()
        self.server.conns.discard(self)
        if self.active is not None:
            self.server.abort(self.active)
            self.active = None

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(ApiError(400, "upgrade not supported"))
        except httptools.HttpParserError:
            too_large, self._too_large = self._too_large, None
            self._reject(too_large or ApiError(400, "bad request"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._headers = {}
        self._head_bytes = 0
        self._body_bytes = 0

    def _head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self.max_header_bytes:
            self._too_large = ApiError(
                431,
                f"request line and headers over {self.max_header_bytes} bytes",
                "RequestHeaderFieldsTooLarge",
            )
            raise self._too_large

    def _body_too_large(self) -> ApiError:
        self._too_large = ApiError(
            413, f"request body over {self.max_body_bytes} bytes", "PayloadTooLarge"
        )
        return self._too_large

    def on_url(self, url: bytes) -> None:
        self._head(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head(len(name) + len(value) + 4)
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        length = self._headers.get(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            raise self._body_too_large()  # answered before the body is read

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body_bytes:
            raise self._body_too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        body = b"".join(self._body)
        self._body = []
        if self.active is not None or self.pending:
            self.pending.append((method, path, body, keep))
            if len(self.pending) >= MAX_PIPELINED and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            return
        self.server.dispatch(self, method, path, body, keep)

    def _reject(self, e: ApiError) -> None:
        """Stop reading; answer `e` once earlier responses are out, then close."""
        self.rejected = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self.active is not None or self.pending:
            self.pending.append(e)
        else:
            self.send_error(e, keep_alive=False)

    def _next(self) -> None:
        """Answer queued pipelined requests until one of them is still in progress."""
        t = self.transport
        if t is None or t.is_closing():
            self.pending.clear()
            return
        while self.pending and self.active is None and not t.is_closing():
            item = self.pending.popleft()
            if isinstance(item, ApiError):
                self.pending.clear()
                self.send_error(item, keep_alive=False)
                return
            self.server.dispatch(self, *item)
        if self.paused and len(self.pending) < MAX_PIPELINED // 2:
            self.paused = False
            if not self.rejected and not t.is_closing():
                t.resume_reading()

    # writing
    def finish_response(self) -> None:
        """The streamed or deferred response of `active` has been written in full."""
        self.active = None
        if self.pending:
            t = self.transport
            if t is None or t.is_closing():
                self.pending.clear()
            else:
                # Not from inside the engine step that finished this response.
                asyncio.get_running_loop().call_soon(self._next)

    def send(
        self, status: int, ctype: bytes, body: bytes, keep_alive: bool = True, extra: bytes = b""
    ) -> None:
        """A whole response with Content-Length."""
        t = self.transport
        if t is None or t.is_closing():
            return
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s"
            b"server: llmtop-sim\r\n%s\r\n"
            % (
                status,
                REASONS.get(status, "OK").encode(),
                ctype,
                len(body),
                SIM_HEADER,
                extra,
                b"" if keep_alive else b"connection: close\r\n",
            )
        )
        t.write(head + body)
        if not keep_alive:
            t.close()

    def send_json(self, status: int, obj: Any, keep_alive: bool = True) -> None:
        self.send(
            status, b"application/json", json.dumps(obj, separators=(",", ":")).encode(), keep_alive
        )

    def send_error(self, e: ApiError, keep_alive: bool = True) -> None:
        self.send_json(e.status, e.body(), keep_alive)

    def start_stream(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
            + SIM_HEADER
            + b"server: llmtop-sim\r\n\r\n"
        )
