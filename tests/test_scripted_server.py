"""The scripted server over real loopback: the yardstick must be right before it measures llmtop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.scripted_server import Fault, Script, ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
STREAM = {"include_usage": True, "continuous_usage_stats": True}


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start scripted servers in background threads; stop them after the test."""
    started: list[ScriptedServer] = []

    def start(**kw: Any) -> ScriptedServer:
        server = ScriptedServer(Script(**kw)).start_in_thread()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop_thread()


async def _stream(
    url: str,
    body: dict[str, Any],
    chat: bool = False,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, list[tuple[float, bytes]], float]:
    """POST and return (status, [(t_ms since send, SSE data line)], t_send)."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    events: list[tuple[float, bytes]] = []
    t0 = time.perf_counter()
    to = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=to) as session,
        session.post(url + path, json=body, headers=headers) as resp,
    ):
        if resp.status != 200:
            await resp.read()
            return resp.status, events, t0
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(((time.perf_counter() - t0) * 1e3, line[6:].strip()))
    return 200, events, t0


def _req(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": list(range(8)),
        "max_tokens": n,
        "stream": True,
        "stream_options": STREAM,
        **extra,
    }


async def test_completions_stream_shape(serve: Any) -> None:
    server = serve(ttft_ms=5, itl_ms=1)
    status, events, _ = await _stream(server.url, _req(5))
    assert status == 200
    assert events[-1][1] == b"[DONE]"
    chunks = [json.loads(e) for _, e in events[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4, 5, 5]
    assert all(c["usage"]["prompt_tokens"] == 8 for c in chunks)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == []
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["length"]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "tok tok tok tok tok"


async def test_chat_first_chunk_is_role_only(serve: Any) -> None:
    server = serve(ttft_ms=5, itl_ms=1)
    body = {
        "messages": [{"role": "user", "content": "a b c"}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": STREAM,
    }
    status, events, _ = await _stream(server.url, body, chat=True)
    assert status == 200
    chunks = [json.loads(e) for _, e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["usage"]["completion_tokens"] == 0
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 3]
    assert chunks[1]["object"] == "chat.completion.chunk"


async def test_models_and_wrong_model(serve: Any) -> None:
    server = serve(model="m1")
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + "/v1/models") as r:
            assert (await r.json())["data"][0]["id"] == "m1"
        async with s.post(server.url + "/v1/completions", json=_req(2, model="nope")) as r:
            assert r.status == 404
            assert "does not exist" in (await r.json())["message"]


async def test_timings_roughly_right_and_recorded(serve: Any) -> None:
    server = serve(ttft_ms=40, itl_ms=8)
    results = await asyncio.gather(*(_stream(server.url, _req(10)) for _ in range(5)))
    for _status, events, _ in results:
        times = [t for t, _ in events]
        assert 40 <= times[0] < 40 + 100  # generous: the test machine is shared
        assert 8 * 9 * 0.8 < times[9] - times[0] < 8 * 9 * 1.5  # nine gaps of ~8 ms
    async with aiohttp.ClientSession() as s, s.get(server.url + "/script/stats") as r:
        stats = await r.json()
    assert stats["requests"] == 5 and stats["completed"] == 5 and stats["tokens"] == 50
    assert stats["ttft_ms"]["count"] == 5 and stats["itl_ms"]["count"] == 45
    assert 40 <= stats["ttft_ms"]["p50"] < 60
    assert 7 < stats["itl_ms"]["p50"] < 12
    assert stats["lateness_ms"]["count"] == 50 and stats["lateness_ms"]["min"] >= 0
    async with aiohttp.ClientSession() as s, s.post(server.url + "/script/reset") as r:
        assert r.status == 200
    assert server.stats.requests == 0


async def test_tokens_per_chunk(serve: Any) -> None:
    server = serve(ttft_ms=5, itl_ms=2, tokens_per_chunk=3)
    _, events, _ = await _stream(server.url, _req(8))
    counts = [json.loads(e)["usage"]["completion_tokens"] for _, e in events[:-1]]
    assert counts == [1, 4, 7, 8, 8]  # first chunk one token, then up to 3 a chunk
    assert server.stats.tokens == 8 and len(server.stats.itl_ns) == 7  # k samples per chunk


@pytest.mark.parametrize("spec", ["status=429", "status=503"])
async def test_fault_status(serve: Any, spec: str) -> None:
    server = serve()
    status, _, _ = await _stream(server.url, _req(3), headers={"x-script-fault": spec})
    assert status == Fault.parse(spec).n


async def test_fault_cut(serve: Any) -> None:
    server = serve(ttft_ms=2, itl_ms=1)
    got: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                server.url + "/v1/completions", json=_req(10), headers={"x-script-fault": "cut=3"}
            ) as r,
        ):
            async for line in r.content:
                if line.startswith(b"data: "):
                    got.append(line)
    assert len(got) == 3


async def test_fault_malformed_and_error_event(serve: Any) -> None:
    server = serve(ttft_ms=2, itl_ms=1)
    _, events, _ = await _stream(server.url, _req(4), headers={"x-script-fault": "malformed=2"})
    bad = []
    for _, e in events[:-1]:
        try:
            json.loads(e)
        except ValueError:
            bad.append(e)
    assert len(bad) == 1 and len(events) == 4 + 1 + 1 + 1  # 4 tokens, usage, bad line, [DONE]
    _, events, _ = await _stream(server.url, _req(6), headers={"x-script-fault": "error_event=2"})
    assert json.loads(events[2][1])["error"]["code"] == 500
    assert events[-1][1] == b"[DONE]"


async def test_fault_hang_times_out(serve: Any) -> None:
    server = serve(ttft_ms=2, itl_ms=1)
    with pytest.raises(asyncio.TimeoutError):
        await _stream(server.url, _req(4), headers={"x-script-fault": "hang"}, timeout=0.3)
    assert server.stats.requests == 1 and server.stats.faulted == 1


async def test_server_wide_stall(serve: Any) -> None:
    server = serve(ttft_ms=2, itl_ms=1, fault="stall=2", fault_every=2)
    status, events, _ = await _stream(server.url, _req(4))  # 1st: clean
    assert status == 200 and len(events) == 6
    got: list[bytes] = []
    with pytest.raises(asyncio.TimeoutError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as s,
            s.post(server.url + "/v1/completions", json=_req(4)) as r,
        ):
            async for line in r.content:
                if line.startswith(b"data: "):
                    got.append(line)
    assert len(got) == 2


async def test_slots_queue_fifo(serve: Any) -> None:
    server = serve(ttft_ms=20, itl_ms=5, slots=2)
    results = await asyncio.gather(*(_stream(server.url, _req(5)) for _ in range(4)))
    ttfts = sorted(events[0][0] for _, events, _ in results)
    # two start at once (~20 ms); two wait for a slot: 20 + 4*5 = 40 ms, then their own 20 ms
    assert ttfts[1] < 50
    assert ttfts[2] > 45
    assert len(server.stats.queue_ns) == 4
    assert sorted(server.stats.queue_ns)[2] > 20e6  # waited for most of a 40 ms stream


async def test_keep_alive_reuses_connection(serve: Any) -> None:
    server = serve(ttft_ms=2, itl_ms=1)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(server.url + "/v1/completions", json=_req(3)) as r:
                await r.read()
        assert len(server._conns) == 1


def test_cli_prints_url_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.scripted_server", "--port", "0", "--ttft-ms", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        url = info["url"]
        _, events, _ = asyncio.run(_stream(url, _req(2)))
        assert events[-1][1] == b"[DONE]"
    finally:
        proc.terminate()
        proc.wait(5)
    assert proc.returncode == 0


async def test_armed_window_counts_only_matching_requests(serve: Any) -> None:
    server = serve(ttft_ms=2, itl_ms=1)
    async with aiohttp.ClientSession() as s:
        url = server.url + "/script/reset?warmup_s=0&duration_s=60&tokens=5"
        async with s.post(url) as r:
            assert r.status == 200
    await _stream(server.url, _req(3))  # a probe: neither counted nor starting the window
    assert server.stats.requests == 0 and server.stats.arm_warmup_ns == 0
    await _stream(server.url, _req(5))
    assert server.stats.requests == 1 and server.stats.tokens == 5
    assert server.stats.window_end_ns - server.stats.window_start_ns == 60 * 10**9
