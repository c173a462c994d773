"""The simulator's HTTP/1.1 connection: httptools parsing on an asyncio.Protocol.

A lean protocol rather than aiohttp (see docs/sim.md): whole responses are one
`transport.write`, streams get their head here and their chunks from `llmtop.sim.wire`.
What to do with a parsed request is the server's business (`SimServer.dispatch`).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httptools

if TYPE_CHECKING:
    from llmtop.sim.scheduler import SimRequest
    from llmtop.sim.server import SimServer

SIM_HEADER = b"x-llmtop-sim: 1\r\n"
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
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
    """One HTTP/1.1 connection: parse with httptools, dispatch, keep alive."""

    __slots__ = ("_body", "_headers", "_url", "active", "closed", "parser", "server", "transport")

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self.active: SimRequest | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        if self.active is not None:
            self.server.abort(self.active)
            self.active = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._raw_error(400, b"upgrade not supported")
        except httptools.HttpParserError:
            self._raw_error(400, b"bad request")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._headers = {}

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        self.server.dispatch(self, method, path, b"".join(self._body), keep)

    # writing
    def finish_response(self) -> None:
        """The streamed or deferred response of `active` has been written in full."""
        self.active = None

    def _raw_error(self, status: int, msg: bytes) -> None:
        if self.transport and not self.transport.is_closing():
            self.send(status, b"text/plain", msg, keep_alive=False)

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
