"""Wire shapes of the simulated server, both flavours, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from llmtop.sim.model import build_settings
from llmtop.sim.server import SimServer

TIME_SCALE = 20.0  # the simulated clock runs 20x faster: same wire, shorter tests


async def _server(engine: str, **kw: Any) -> tuple[SimServer, str]:
    server = SimServer(build_settings(engine=engine, **kw), time_scale=TIME_SCALE)
    port = await server.start("127.0.0.1", 0)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def vllm() -> AsyncIterator[tuple[SimServer, str]]:
    server, url = await _server("vllm")
    yield server, url
    await server.close()


@pytest.fixture
async def trtllm() -> AsyncIterator[tuple[SimServer, str]]:
    server, url = await _server("trtllm")
    yield server, url
    await server.close()


async def _sse(resp: aiohttp.ClientResponse) -> list[Any]:
    """Events of an SSE body: parsed JSON objects, and the string "[DONE]"."""
    assert resp.status == 200, await resp.text()
    assert resp.headers["content-type"].startswith("text/event-stream")
    raw = (await resp.read()).decode()
    events: list[Any] = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_version_models_health_and_sim_label(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/version") as r:
            assert r.headers["x-llmtop-sim"] == "1"
            v = await r.json()
        assert v["simulated"] is True and v["engine"] == "llmtop-sim"
        assert v["flavour"] == "vllm" and v["settings"]["gpu"] == "a100-80g"
        async with s.get(url + "/v1/models") as r:
            m = await r.json()
        assert m["data"][0]["id"] == "llama-3-8b"
        async with s.get(url + "/health") as r:
            assert r.status == 200 and r.headers["x-llmtop-sim"] == "1"
        async with s.get(url + "/nope") as r:
            assert r.status == 404 and (await r.json())["object"] == "error"


async def test_streaming_completion_with_continuous_usage(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    body = {
        "model": "llama-3-8b",
        "prompt": list(range(10)),
        "max_tokens": 5,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        assert r.headers["x-llmtop-sim"] == "1"
        ev = await _sse(r)
    assert ev[-1] == "[DONE]"
    content, final = ev[:-2], ev[-2]
    assert len(content) == 5
    for k, c in enumerate(content, 1):
        assert c["object"] == "text_completion" and c["id"].startswith("cmpl-")
        assert c["usage"]["completion_tokens"] == k and c["usage"]["prompt_tokens"] == 10
        assert c["usage"]["total_tokens"] == 10 + k
        assert len(c["choices"]) == 1 and c["choices"][0]["text"]
        assert c["choices"][0]["finish_reason"] == ("length" if k == 5 else None)
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 5


async def test_streaming_completion_usage_only_at_the_end(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    body = {
        "prompt": [1, 2, 3],
        "max_tokens": 3,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        ev = await _sse(r)
    assert [e["usage"] for e in ev[:3]] == [None, None, None]
    assert ev[3]["choices"] == [] and ev[3]["usage"]["completion_tokens"] == 3
    body.pop("stream_options")
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", json=body) as r:
        ev = await _sse(r)
    assert len(ev) == 4 and ev[-1] == "[DONE]"  # no usage chunk without include_usage


async def test_streaming_chat_role_chunk_then_content(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    body = {
        "messages": [{"role": "user", "content": "Say something, please."}],
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=body) as r:
            ev = await _sse(r)
        async with s.post(url + "/tokenize", json={"messages": body["messages"]}) as r:
            count = (await r.json())["count"]
    role = ev[0]
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["usage"]["completion_tokens"] == 0
    content = ev[1:-2]
    assert [c["usage"]["completion_tokens"] for c in content] == [1, 2, 3, 4]
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert ev[-2]["choices"] == [] and ev[-2]["usage"]["prompt_tokens"] == count
    assert ev[-1] == "[DONE]"


async def test_non_streaming_and_tokenize_agree(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    prompt = "The quick brown fox jumps over the lazy dog, twice."
    async with aiohttp.ClientSession() as s:
        async with s.post(
            url + "/v1/completions", json={"prompt": prompt, "max_tokens": 7, "ignore_eos": True}
        ) as r:
            out = await r.json()
        async with s.post(url + "/tokenize", json={"prompt": prompt}) as r:
            tok = await r.json()
        async with s.post(
            url + "/tokenize",
            json={"prompt": out["choices"][0]["text"], "add_special_tokens": False},
        ) as r:
            gen = await r.json()
        async with s.post(
            url + "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3,
                "ignore_eos": True,
            },
        ) as r:
            chat = await r.json()
    assert out["object"] == "text_completion"
    assert out["usage"]["prompt_tokens"] == tok["count"]
    assert out["usage"]["completion_tokens"] == 7 == gen["count"]
    assert out["choices"][0]["finish_reason"] == "length"
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] == 3


async def test_seeded_eos_and_min_tokens(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    body = {"prompt": [5] * 8, "max_tokens": 3000, "min_tokens": 20}
    async with aiohttp.ClientSession() as s:
        outs = await asyncio.gather(
            *[(await s.post(url + "/v1/completions", json=body)).json() for _ in range(6)]
        )
    reasons = [o["choices"][0]["finish_reason"] for o in outs]
    counts = [o["usage"]["completion_tokens"] for o in outs]
    assert "stop" in reasons
    assert all(c >= 20 for c in counts) and all(c <= 3000 for c in counts)


async def test_errors_like_the_engines(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    async with aiohttp.ClientSession() as s:
        async with s.post(
            url + "/v1/completions", json={"prompt": [1] * 8000, "max_tokens": 500}
        ) as r:
            assert r.status == 400
            assert "maximum context length is 8192" in (await r.json())["message"]
        async with s.post(
            url + "/v1/completions", json={"model": "gpt-4", "prompt": "x", "max_tokens": 1}
        ) as r:
            assert r.status == 404
        # vLLM ignores unknown fields (with a warning); so does its sim.
        async with s.post(
            url + "/v1/completions", json={"prompt": "x", "max_tokens": 1, "bogus": 1}
        ) as r:
            assert r.status == 200
        async with s.post(url + "/v1/completions", data=b"{not json") as r:
            assert r.status == 400


async def test_vllm_prometheus_metrics(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    async with aiohttp.ClientSession() as s:
        async with s.post(
            url + "/v1/completions", json={"prompt": [1] * 20, "max_tokens": 6, "ignore_eos": True}
        ) as r:
            assert r.status == 200
        async with s.get(url + "/metrics") as r:
            assert r.headers["content-type"].startswith("text/plain")
            text = await r.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{", 1)[0]
            assert 'model_name="llama-3-8b"' in name_labels
            values[name] = values.get(name, 0.0) + float(value)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
    ):
        assert name in values
    assert values["vllm:generation_tokens_total"] == 6
    assert values["vllm:prompt_tokens_total"] == 20
    assert values["vllm:request_success_total"] == 1
    assert "# TYPE vllm:generation_tokens counter" in text


async def test_trtllm_rejects_unknown_fields_and_bad_stream_options(
    trtllm: tuple[SimServer, str],
) -> None:
    _, url = trtllm
    ok = {"model": "llama-3-8b", "prompt": [1, 2, 3], "max_tokens": 2, "ignore_eos": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", json={**ok, "bogus_field": 1}) as r:
            assert r.status == 400
            err = await r.json()
            assert err["object"] == "error" and "bogus_field" in err["message"]
        async with s.post(
            url + "/v1/completions", json={**ok, "stream_options": {"include_usage": True}}
        ) as r:
            assert r.status == 400
            assert "stream is true" in (await r.json())["message"]
        async with s.post(url + "/v1/completions", json={**ok, "min_tokens": 1}) as r:
            assert r.status == 200
        chat = {
            "model": "llama-3-8b",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        async with s.post(url + "/v1/chat/completions", json=chat) as r:
            ev = await _sse(r)
        assert ev[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert ev[-1] == "[DONE]" and ev[-2]["choices"] == []
        async with s.post(url + "/v1/chat/completions", json={**chat, "foo": 1}) as r:
            assert r.status == 400


async def test_trtllm_metrics_are_iteration_stats_emptied_on_read(
    trtllm: tuple[SimServer, str],
) -> None:
    _, url = trtllm
    async with aiohttp.ClientSession() as s:
        async with s.post(
            url + "/v1/completions",
            json={"model": "llama-3-8b", "prompt": [1] * 64, "max_tokens": 4, "ignore_eos": True},
        ) as r:
            assert r.status == 200
        async with s.get(url + "/metrics") as r:
            stats = await r.json()
        async with s.get(url + "/metrics") as r:
            again = await r.json()
    assert len(stats) == 4 and again == []
    first = stats[0]
    for key in (
        "iter",
        "iterLatencyMS",
        "numActiveRequests",
        "numQueuedRequests",
        "kvCacheStats",
        "inflightBatchingStats",
        "gpuMemUsage",
    ):
        assert key in first
    assert first["inflightBatchingStats"]["numContextRequests"] == 1
    assert first["kvCacheStats"]["tokensPerBlock"] == 32
    assert stats[-1]["numCompletedRequests"] == 1


async def test_client_disconnect_aborts_the_request(vllm: tuple[SimServer, str]) -> None:
    server, url = vllm
    body = {"prompt": [1] * 8, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as s:
        r = await s.post(url + "/v1/completions", json=body)
        await r.content.readuntil(b"\n\n")
        assert len(server.sched.running) == 1
        r.close()
    for _ in range(100):
        if not server.sched.has_work():
            break
        await asyncio.sleep(0.01)
    assert not server.sched.has_work()
    assert server.sched.free_blocks == server.sched.total_blocks


async def test_concurrent_streams_batch_and_report_lateness(
    vllm: tuple[SimServer, str],
) -> None:
    _, url = vllm
    body = {"prompt": [1] * 16, "max_tokens": 30, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.post(url + "/v1/completions", json=body) as r:
                return sum(1 for e in await _sse(r) if e != "[DONE]")

        counts = await asyncio.gather(*[one() for _ in range(16)])
        async with s.get(url + "/sim/stats") as r:
            stats = await r.json()
    assert counts == [30] * 16
    assert stats["tokens_emitted"] == 480 and stats["simulated"] is True
    # Far fewer iterations than tokens: the streams were batched together.
    assert stats["iterations"] < 100
    assert stats["lateness_samples"] == 480
