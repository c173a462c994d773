"""Conversations against a real vLLM (CPU build) with prefix caching on.

A 3-turn chat conversation resends its history; vLLM's prefix cache holds the earlier turns,
so `usage.prompt_tokens_details.cached_tokens` (served with `--enable-prompt-tokens-details`)
is > 0 from turn 2; and llmtop's token totals equal the server's own counters, read from
/metrics right before and right after the load (after the preflight's probes). The vLLM venv
comes from `.ci/install_vllm.sh` (skip without it, fail under CI=true / LLMTOP_REQUIRE_VLLM=1).
"""

from __future__ import annotations

import urllib.request

import pytest

from llmtop.config import LoadPlan, RunConfig, Target, Workload
from llmtop.engines.poller import parse_prometheus
from llmtop.session import LoadSession, drive
from llmtop.setup import prepare
from tests.support.vllm_server import running_vllm, vllm_python_or_skip

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(400)]

COUNTERS = (
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
)


def counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = dict.fromkeys(COUNTERS, 0.0)
    for name, _, value in parse_prometheus(text):
        if name in out:
            out[name] += value
    return out


def test_three_turns_hit_the_prefix_cache_and_totals_match_the_server() -> None:
    py = vllm_python_or_skip()
    extra = ["--enable-prompt-tokens-details", "--enable-prefix-caching"]
    with running_vllm(max_num_seqs=8, extra_args=extra, python=py) as url:
        config = RunConfig(
            Target(url, api="chat", model=url.model),
            Workload(input_len=96, output_len=24, turns=3, think_time="0.2"),
            LoadPlan(request_rate=2.0, num_requests=4),
        )
        with prepare(config) as prep:
            before = counters(url)
            session = LoadSession(prep.config)
            session.start()
            drive(session)
            after = counters(url)
        s = session.summary()
    delta = {k: after[k] - before[k] for k in COUNTERS}
    assert s["completed"] == 12 and s["failed"] == 0, s["errors"]
    by_turn = s["by_turn"]
    assert {k: v["completed"] for k, v in by_turn.items()} == {"1": 4, "2": 4, "3": 4}
    assert by_turn["2"]["cached_prompt_tokens"] > 0
    assert by_turn["3"]["cached_prompt_tokens"] > 0
    assert (
        by_turn["3"]["prompt_tokens"]
        > by_turn["2"]["prompt_tokens"]
        > by_turn["1"]["prompt_tokens"]
    )
    # llmtop's totals are the server's
    assert s["prompt_tokens"] == delta["vllm:prompt_tokens_total"]
    assert s["output_tokens"] == delta["vllm:generation_tokens_total"] == 12 * 24
    assert s["cached_prompt_tokens"] == delta["vllm:prefix_cache_hits_total"]
    assert s["prompt_tokens"] == delta["vllm:prefix_cache_queries_total"]
