"""Hostile servers against the hot path's side doors: no secret in any message.

aiohttp's exceptions carry the request in their repr (Authorization included) and the URL
plus raw server bytes over several lines in their str. Triton's preflight must turn them into
one line that holds neither. Real sockets: a raw server thread per hostile behaviour.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import pytest

from llmtop.backends.http import client_error_cause, error_detail
from llmtop.backends.triton import triton_preflight
from llmtop.config import RunConfig, Target, Workload
from llmtop.errors import TargetError

KEY = "sk-hostile-test-0123456789"


class RawServer:
    """Answers every connection with the bytes `reply(port)` gives, and records requests."""

    def __init__(self, reply: Callable[[int], bytes]) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    got = conn.recv(65536)
                    self.seen.append(got)
                    conn.sendall(self.reply(self.port))
                    conn.shutdown(socket.SHUT_WR)
                    conn.recv(65536)
                except OSError:
                    pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()


def _redirect_to(target: str) -> Callable[[int], bytes]:
    def reply(port: int) -> bytes:
        loc = target.format(port=port).encode()
        head = b"HTTP/1.1 302 Found\r\nLocation: %s\r\nconnection: close\r\n"
        return head % loc + b"content-length: 0\r\n\r\n"

    return reply


HOSTILE = {
    "malformed status line": lambda port: b"HTTP/1.1 2x0 \x1b[31mWHAT\r\n\r\n",
    "256 KB header": lambda port: b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 262144 + b"\r\n\r\n",
    "redirect loop": _redirect_to("http://127.0.0.1:{port}/again"),
    "garbage": lambda port: b"\x00\x01\x1b]0;pwned\x07garbage\r\n\r\n",
}


def _preflight(url: str) -> None:
    import aiohttp

    config = RunConfig(
        Target(url, api="triton", model="ensemble", api_key=KEY),
        Workload(input_len=8, output_len=4),
        text_prompts=("hello",),
    )
    headers = {"Authorization": f"Bearer {KEY}"}

    async def go() -> None:
        async with aiohttp.ClientSession() as session:
            await triton_preflight(session, url, config, headers)

    asyncio.run(go())


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_triton_preflight_errors_are_one_line_without_the_key(name: str) -> None:
    server = RawServer(HOSTILE[name])
    try:
        with pytest.raises(TargetError) as info:
            _preflight(server.url)
    finally:
        server.close()
    message = str(info.value)
    assert KEY not in message and "Authorization" not in message
    assert "\n" not in message and "\x1b" not in message and "\x07" not in message
    assert message.startswith(f"cannot talk to Triton at {server.url}: ")
    assert len(message) < 200, message


def test_a_redirect_to_another_listener_gets_no_key() -> None:
    other = RawServer(lambda port: b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
    # "localhost" is another origin than 127.0.0.1 for the client, same machine for the test
    server = RawServer(_redirect_to(f"http://localhost:{other.port}/v2/health/ready"))
    try:
        with pytest.raises(TargetError):
            _preflight(server.url)
    finally:
        server.close()
        other.close()
    assert server.seen and KEY.encode() in server.seen[0]  # the target itself did get it
    assert all(KEY.encode() not in req for req in other.seen)


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b'{"error":{"message":"bad\\u001b[2J\\nthing"}}', "bad [2J thing"),
        (b"\x1b]0;title\x07oops\r\nsecond line", "]0;title oops  second line"),
        (b'{"detail":"x' + b"y" * 400 + b'"}', "x" + "y" * 159),
        (b"[" * 100000, "[" * 160),
    ],
)
def test_error_details_are_one_printable_line(body: bytes, want: str) -> None:
    assert error_detail(body) == want


def test_client_error_cause_names_the_kind_only() -> None:
    import aiohttp

    assert client_error_cause(aiohttp.ServerDisconnectedError()) == (
        "the server closed the connection"
    )
    assert client_error_cause(TimeoutError()) == "timed out"
    assert client_error_cause(ConnectionRefusedError(111, "Connection refused")) == (
        "Connection refused"
    )
