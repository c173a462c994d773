"""Prefix caching in the simulator: the block pool, the scheduler, and the wire (loopback)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtop.sim.kvcache import KvBlocks, block_hashes
from llmtop.sim.model import build_settings
from llmtop.sim.scheduler import Scheduler, SimRequest
from llmtop.sim.server import SimServer
from llmtop.sim.tokens import WORDS, chat_token_ids

BS = 16  # vLLM's block size


# -- the block pool ---------------------------------------------------------------------
def test_block_hashes_chain_over_full_blocks_only() -> None:
    a = block_hashes(list(range(40)), BS)
    b = block_hashes([*range(32), 99, 98], BS)
    assert len(a) == 2 and a == b  # 40 tokens: two full blocks; the partial third has none
    c = block_hashes([1000, *range(1, 40)], BS)
    assert c[0] != a[0] and c[1] != a[1]  # one token differs: every later hash differs


def test_free_blocks_are_evicted_least_recently_freed_first_tail_first() -> None:
    kv = KvBlocks(4, caching=True)
    first = kv.allocate(2)
    for b, h in zip(first, (11, 12), strict=True):
        kv.cache_block(b, h)
    kv.release(first)  # tail first: the second block (hash 12) is evicted before the first
    assert kv.num_free == 4 and kv.lookup([11, 12], 2) == first
    kv.allocate(2)  # the two never-used blocks
    kv.allocate(1)  # evicts hash 12
    assert kv.lookup([11, 12], 2) == [first[0]]
    kv.touch([first[0]])  # a hit takes it out of the free queue
    assert kv.num_free == 0
    kv.release([first[0]])
    assert kv.reset() == 1 and kv.lookup([11], 1) == []


def _req(rid: int, ids: list[int], out: int) -> SimRequest:
    return SimRequest(
        rid=rid, prompt_len=len(ids), max_tokens=out, stop_at=out, arrival=0.0, token_ids=ids
    )


def _finish(sched: Scheduler, req: SimRequest) -> list[int]:
    """Run `req` alone to the end; returns the tokens computed in each step."""
    sched.add(req)
    now, per_step = 0.0, []
    while sched.has_work():
        step = sched.schedule()
        assert step is not None
        per_step.append(sum(n for _, n in step.work))
        now += step.duration
        sched.complete(step, now)
    return per_step


@pytest.mark.parametrize("engine", ["vllm", "trtllm"])
def test_cached_blocks_skip_prefill(engine: str) -> None:
    sched = Scheduler(build_settings(engine=engine))
    bs = sched.block_size
    prefix = list(range(1, 1025))
    first = _req(1, [*prefix, *range(5000, 6024)], 4)
    steps = _finish(sched, first)
    assert first.num_cached_tokens == 0 and sum(steps) == 2048 + 3
    second = _req(2, [*prefix, *range(7000, 8024)], 4)
    steps = _finish(sched, second)
    assert second.num_cached_tokens == 1024 // bs * bs
    assert sum(steps) == 2048 - second.num_cached_tokens + 3
    assert sched.prefix_cache_queries_total == 4096
    assert sched.prefix_cache_hits_total == second.num_cached_tokens


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    sched = Scheduler(build_settings(engine="vllm"))
    ids = list(range(1, 65))  # exactly four blocks
    _finish(sched, _req(1, ids, 2))
    again = _req(2, list(ids), 2)
    steps = _finish(sched, again)
    assert again.num_cached_tokens == 48 and steps[0] == 16


def test_without_prefix_caching_nothing_is_reused() -> None:
    sched = Scheduler(build_settings(engine="vllm", enable_prefix_caching=False))
    ids = list(range(1, 2049))
    _finish(sched, _req(1, ids, 2))
    again = _req(2, list(ids), 2)
    _finish(sched, again)
    assert again.num_cached_tokens == 0 and sched.prefix_cache_hits_total == 0


def test_a_later_turn_hits_the_history_and_the_generated_tokens() -> None:
    """Turn 2's template resends turn 1's prompt and answer: both come from the cache."""
    s = build_settings(engine="vllm")
    sched = Scheduler(s)
    msgs = [{"role": "user", "content": "Tell me about caches. " * 40}]
    p1 = chat_token_ids(msgs, True, s.model.vocab)
    turn1 = _req(1, p1, 40)
    _finish(sched, turn1)
    # The words the sim generated for request 1 (what wire.py writes).
    answer = "".join(WORDS[(1 * 7 + i) % len(WORDS)] for i in range(40))
    msgs2 = [*msgs, {"role": "assistant", "content": answer}, {"role": "user", "content": "More?"}]
    turn2 = _req(2, chat_token_ids(msgs2, True, s.model.vocab), 4)
    _finish(sched, turn2)
    assert turn2.num_cached_tokens == (len(p1) + 40 - 1) // BS * BS


# -- over loopback ------------------------------------------------------------------------
async def _server(**kw: Any) -> tuple[SimServer, str]:
    server = SimServer(build_settings(engine="vllm", **kw))
    port = await server.start("127.0.0.1", 0)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def vllm() -> AsyncIterator[str]:
    server, url = await _server()
    yield url
    await server.close()


@pytest.fixture
async def vllm_nocache() -> AsyncIterator[str]:
    server, url = await _server(enable_prefix_caching=False)
    yield url
    await server.close()


async def _complete(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with s.post(url + "/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def _stream_ttft(
    s: aiohttp.ClientSession, url: str, prompt: list[int]
) -> tuple[float, dict[str, Any]]:
    """TTFT of a streamed completion (seconds) and its final usage."""
    body = {
        "prompt": prompt,
        "max_tokens": 2,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    usage: dict[str, Any] = {}
    async with s.post(url + "/v1/completions", json=body) as r:
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            ev = json.loads(line[6:])
            if ev["choices"] and ttft is None:
                ttft = time.perf_counter() - t0
            if ev.get("usage"):
                usage = ev["usage"]
    assert ttft is not None
    return ttft, usage


def _prompt(group: int, unique: int) -> list[int]:
    """1024 tokens shared by a group, then 1024 of this request's own."""
    return [10_000 + group] * 1024 + [50_000 + unique * 1024 + i for i in range(1024)]


async def test_shared_prefixes_are_reported_cached(vllm: str) -> None:
    async with aiohttp.ClientSession() as s:
        first = await _complete(s, vllm, {"prompt": _prompt(0, 0), "max_tokens": 2})
        assert first["usage"]["prompt_tokens_details"] is None  # nothing cached yet
        for u in range(1, 4):
            r = await _complete(s, vllm, {"prompt": _prompt(0, u), "max_tokens": 2})
            assert r["usage"]["prompt_tokens"] == 2048
            assert r["usage"]["prompt_tokens_details"] == {"cached_tokens": 1024}
        other = await _complete(s, vllm, {"prompt": _prompt(1, 9), "max_tokens": 2})
        assert other["usage"]["prompt_tokens_details"] is None  # another group: a miss
        _, usage = await _stream_ttft(s, vllm, _prompt(0, 5))
        assert usage["prompt_tokens_details"] == {"cached_tokens": 1024}
        async with s.get(vllm + "/metrics") as r:
            text = await r.text()
    got = {
        smp.name: smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
        if smp.name.startswith("vllm:prefix_cache")
    }
    assert got["vllm:prefix_cache_queries_total"] == 6 * 2048
    assert got["vllm:prefix_cache_hits_total"] == 4 * 1024


async def test_text_prompts_and_chat_turns_hit_the_cache(vllm: str) -> None:
    shared = "abcd" * 1024  # 1024 tokens of text after BOS
    async with aiohttp.ClientSession() as s:
        await _complete(s, vllm, {"prompt": shared + "x" * 400, "max_tokens": 1})
        r = await _complete(s, vllm, {"prompt": shared + "y" * 400, "max_tokens": 1})
        assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024
        msgs: list[dict[str, str]] = [
            {"role": "system", "content": "You are a careful assistant. " * 60},
            {"role": "user", "content": "First question?"},
        ]
        body: dict[str, Any] = {"messages": msgs, "max_tokens": 30, "ignore_eos": True}
        async with s.post(vllm + "/v1/chat/completions", json=body) as resp:
            turn1 = await resp.json()
        p1 = turn1["usage"]["prompt_tokens"]
        answer = turn1["choices"][0]["message"]["content"]
        msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And?"}]
        body = {
            "messages": msgs,
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage = {}
        async with s.post(vllm + "/v1/chat/completions", json=body) as resp:
            async for line in resp.content:
                if line.startswith(b"data: {") and b'"usage":{' in line:
                    usage = json.loads(line[6:])["usage"]
    # The whole first turn (prompt and answer, minus its last, never computed token).
    assert usage["prompt_tokens_details"]["cached_tokens"] == (p1 + 30 - 1) // BS * BS


async def test_caching_lowers_ttft_and_can_be_turned_off(vllm: str, vllm_nocache: str) -> None:
    async with aiohttp.ClientSession() as s:
        ttft = {}
        for name, url in (("cache", vllm), ("nocache", vllm_nocache)):
            await _stream_ttft(s, url, _prompt(0, 0))  # warms the group's prefix
            runs = [await _stream_ttft(s, url, _prompt(0, u)) for u in range(1, 4)]
            ttft[name] = statistics.median(t for t, _ in runs)
            cached = {u.get("prompt_tokens_details") is not None for _, u in runs}
            assert cached == {name == "cache"}
    # 1024 of 2048 prompt tokens skip prefill: about half the prefill time (~0.13 s on
    # the A100 preset). Allow for the loop's own costs on a busy machine.
    assert ttft["cache"] < 0.8 * ttft["nocache"], ttft
