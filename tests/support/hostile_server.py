"""Servers that misbehave on purpose, on real loopback sockets (raw asyncio, no HTTP library
on the server side, so they can send what no library would).

`HostileServer(mode)` answers every request the same hostile way:

- `redirect_loop`: 302 to the path it was asked for, forever;
- `redirect_to`: 307 to `target` (another listener: the key must never reach it);
- `bad_status`: a status line that is not HTTP;
- `huge_header`: a 256 KB header line;
- `many_headers`: 10,000 header lines;
- `huge_body`: a `/metrics` of `body_mb` megabytes with an honest Content-Length;
- `endless_body`: a chunked body that never ends;
- `slow_headers`: one header byte every 0.2 s, forever;
- `escape`: a normal-looking OpenAI server whose model id and error messages carry terminal
  escape sequences.

`RecordingServer` answers 200 with a model list and keeps every raw request it receives.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field


@dataclass
class _Base:
    host: str = "127.0.0.1"
    port: int = 0
    received: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> _Base:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> _Base:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
        body = await reader.readexactly(length) if length else b""
        self.received.append(head + body)
        method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        return method, path, body

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    break
                if not await self.answer(req[0], req[1], req[2], writer):
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def answer(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        raise NotImplementedError


def _reply(status: str, body: bytes, ctype: str = "application/json", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@dataclass
class RecordingServer(_Base):
    """Answers like an OpenAI server's /v1/models and keeps every raw request."""

    async def answer(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        data = json.dumps({"object": "list", "data": [{"id": "m", "owned_by": "vllm"}]})
        w.write(_reply("200 OK", data.encode()))
        await w.drain()
        return True


ESCAPE = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"


@dataclass
class HostileServer(_Base):
    mode: str = "redirect_loop"
    target: str = ""  # for redirect_to
    body_mb: int = 100  # for huge_body

    async def answer(self, method: str, path: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        mode = self.mode
        if mode == "redirect_loop":
            w.write(_reply("302 Found", b"", extra=f"Location: {path}\r\n"))
        elif mode == "redirect_to":
            where = f"Location: {self.target}{path}\r\n"
            w.write(_reply("307 Temporary Redirect", b"", extra=where))
        elif mode == "bad_status":
            w.write(b"HTTP/1.1 two hundred OK\r\nContent-Length: 0\r\n\r\n")
        elif mode == "huge_header":
            w.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (256 << 10) + b"\r\n\r\n")
        elif mode == "many_headers":
            w.write(b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 10_000 + b"\r\n")
        elif mode == "huge_body":
            size = self.body_mb << 20
            w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            chunk = b"# junk\n" * 9362
            sent = 0
            while sent < size:
                w.write(chunk)
                sent += len(chunk)
                await w.drain()
        elif mode == "endless_body":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                w.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                await w.drain()
        elif mode == "slow_headers":
            w.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while True:
                w.write(b"a")
                await w.drain()
                await asyncio.sleep(0.2)
        elif mode == "escape":
            return await self._escape(method, path, w)
        await w.drain()
        return mode not in ("bad_status", "huge_header", "many_headers")

    async def _escape(self, method: str, path: str, w: asyncio.StreamWriter) -> bool:
        """An OpenAI server whose strings carry escape sequences; requests fail with one."""
        if path.startswith("/v1/models"):
            data = {"object": "list", "data": [{"id": f"m{ESCAPE}x", "owned_by": ESCAPE}]}
            w.write(_reply("200 OK", json.dumps(data).encode()))
        elif path.startswith("/version"):
            w.write(_reply("200 OK", json.dumps({"version": f"1.0{ESCAPE}"}).encode()))
        elif method == "POST":
            err = {"error": {"message": f"bad things {ESCAPE}happened", "type": "x"}}
            w.write(_reply("500 Internal Server Error", json.dumps(err).encode()))
        else:
            w.write(_reply("404 Not Found", b'{"detail":"Not Found"}'))
        await w.drain()
        return True
