"""The simulator's HTTP/1.1 layer over raw loopback sockets: size limits and pipelining."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httptools
import pytest

from llmtop.sim.model import build_settings
from llmtop.sim.server import SimServer


class _Responses:
    """Parses a byte stream of HTTP/1.1 responses (httptools) into (status, headers, body)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, b"".join(self._body)))


async def _exchange(
    port: int, raw: bytes, expect: int, timeout_s: float = 10.0
) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], bool]:
    """Send `raw` at once, read until `expect` responses; also say if the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = _Responses()
    closed = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(out.done) < expect:
        data = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        if not data:
            closed = True
            break
        out.parser.feed_data(data)
    if not closed:
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.3) == b""
        except TimeoutError:
            closed = False
    writer.close()
    return out.done, closed


def _post(path: str, body: dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


def _completion(max_tokens: int, stream: bool) -> bytes:
    return _post(
        "/v1/completions",
        {"prompt": [1, 2, 3], "max_tokens": max_tokens, "ignore_eos": True, "stream": stream},
    )


def _stream_tokens(body: bytes) -> int:
    events = [b for b in body.decode().split("\n\n") if b.startswith("data: {")]
    return len(events)


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimServer, int]]:
    server = SimServer(
        build_settings(engine="vllm"), time_scale=20.0, max_header_bytes=4096, max_body_bytes=2048
    )
    port = await server.start("127.0.0.1", 0)
    yield server, port
    await server.close()


async def test_pipelined_requests_are_answered_in_order(sim: tuple[SimServer, int]) -> None:
    _, port = sim
    raw = (
        _completion(7, stream=True)
        + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        + _completion(3, stream=False)
        + _completion(2, stream=True)
        + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    got, closed = await _exchange(port, raw, expect=5)
    assert [g[0] for g in got] == [200] * 5 and not closed
    assert _stream_tokens(got[0][2]) == 7 and got[0][2].endswith(b"data: [DONE]\n\n")
    assert got[1][2] == b""  # /health
    full = json.loads(got[2][2])
    assert full["usage"]["completion_tokens"] == 3 and full["object"] == "text_completion"
    assert _stream_tokens(got[3][2]) == 2
    assert json.loads(got[4][2])["object"] == "list"


async def test_pipelined_request_after_a_closing_one_is_dropped(
    sim: tuple[SimServer, int],
) -> None:
    _, port = sim
    raw = (
        _post("/v1/completions", {"prompt": [1], "max_tokens": 2}, "Connection: close\r\n")
        + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    got, closed = await _exchange(port, raw, expect=2)
    assert len(got) == 1 and got[0][0] == 200 and closed


async def test_oversized_headers_get_431_and_close(sim: tuple[SimServer, int]) -> None:
    _, port = sim
    raw = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    got, closed = await _exchange(port, raw, expect=1)
    assert got[0][0] == 431 and closed
    err = json.loads(got[0][2])
    assert err["object"] == "error" and err["code"] == 431 and "4096" in err["message"]


async def test_announced_oversized_body_gets_413_before_it_is_sent(
    sim: tuple[SimServer, int],
) -> None:
    _, port = sim
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    got, closed = await _exchange(port, head, expect=1)
    assert got[0][0] == 413 and closed
    assert "2048" in json.loads(got[0][2])["message"]


async def test_chunked_oversized_body_gets_413(sim: tuple[SimServer, int]) -> None:
    _, port = sim
    chunk = b"x" * 1500
    raw = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
        + b"0\r\n\r\n"
    )
    got, closed = await _exchange(port, raw, expect=1)
    assert got[0][0] == 413 and closed


async def test_oversized_request_behind_a_stream_is_answered_after_it(
    sim: tuple[SimServer, int],
) -> None:
    _, port = sim
    big = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n"
    got, closed = await _exchange(port, _completion(4, stream=True) + big, expect=2)
    assert [g[0] for g in got] == [200, 413] and closed
    assert _stream_tokens(got[0][2]) == 4


async def test_a_body_within_the_limit_is_served(sim: tuple[SimServer, int]) -> None:
    _, port = sim
    # 1.9 KB of prompt text: under the 2 KiB cap, and served normally.
    body = {"prompt": "abcd" * 470, "max_tokens": 1, "ignore_eos": True}
    got, closed = await _exchange(port, _post("/v1/completions", body), expect=1)
    assert got[0][0] == 200 and not closed
    assert json.loads(got[0][2])["usage"]["prompt_tokens"] == 471
