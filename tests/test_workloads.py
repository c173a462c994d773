"""Production-like workloads end to end: conversations, prefix groups, reasoning, cache resets.

Against real servers on loopback (an aiohttp server that remembers every request and the
exact text it answered, the built-in simulator), through the real CLI.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmtop.backends.openai import RequestFactory, parse_url
from llmtop.backends.richstream import RichStream, string_end
from llmtop.backends.sse import StreamState
from llmtop.config import Dialect, RunConfig, Target, Workload
from llmtop.load.conversations import ThinkTime
from tests.conftest import assert_one_line_error, run_cli
from tests.support.workload_server import WorkloadServer, count_words

FAST = ["--input-len", "40", "--output-len", "6"]


def loads_body(request: bytes) -> dict[str, Any]:
    return json.loads(request.split(b"\r\n\r\n", 1)[1])


def load_requests(srv: WorkloadServer, out_len: int) -> list[tuple[int, dict[str, Any]]]:
    """(index, body) of the load's requests (the preflight's probe asks for 3 tokens)."""
    return [(i, b) for i, b in enumerate(srv.requests) if b.get("max_tokens") == out_len]


# -- pure pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "a", "b"),
    [
        ("0", "fixed", 0.0, 0.0),
        ("2.5", "fixed", 2.5, 0.0),
        ("exp:2", "exp", 2.0, 0.0),
        ("uniform:1:3", "uniform", 1.0, 3.0),
        (" EXP:0.5 ", "exp", 0.5, 0.0),
    ],
)
def test_think_time_parses(text: str, kind: str, a: float, b: float) -> None:
    t = ThinkTime.parse(text)
    assert (t.kind, t.a, t.b) == (kind, a, b)


@pytest.mark.parametrize("bad", ["-1", "exp", "exp:1:2", "uniform:3:1", "normal:1:2", "x", "inf"])
def test_think_time_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="think time"):
        ThinkTime.parse(bad)


def test_think_time_draws_have_the_asked_mean() -> None:
    import random

    rng = random.Random(1)
    for spec, mean in (("exp:2", 2.0), ("uniform:1:3", 2.0), ("0.25", 0.25)):
        t = ThinkTime.parse(spec)
        draws = [t.draw_ns(rng) / 1e9 for _ in range(20000)]
        assert abs(sum(draws) / len(draws) - mean) < 0.05 * mean, spec
        assert min(draws) >= 0


def _factory(**wl: Any) -> RequestFactory:
    cfg = RunConfig(Target("http://127.0.0.1:9", model="m"), Workload(**wl), dialect=Dialect())
    return RequestFactory(cfg, parse_url(cfg.target.url))


def test_prefix_groups_share_exactly_their_prefix_then_go_unique() -> None:
    groups, plen, n_in = 4, 32, 64
    f = _factory(input_len=n_in, output_len=8, prefix_groups=groups, prefix_len=plen, seed=3)
    prompts = [loads_body(f.build())["prompt"] for _ in range(40)]
    assert all(len(p) == n_in for p in prompts)
    heads = [tuple(p[:plen]) for p in prompts]
    for i, h in enumerate(heads):
        assert h == heads[i % groups], "request i belongs to group i mod G"
    assert len(set(heads[:groups])) == groups, "groups differ"
    # right after the prefix: a unique start, so no block beyond the prefix is shared
    starts = {tuple(p[plen : plen + 4]) for p in prompts}
    assert len(starts) == len(prompts)
    # the same groups in another process (same seed): the load process builds its own
    again = _factory(input_len=n_in, output_len=8, prefix_groups=groups, prefix_len=plen, seed=3)
    assert [loads_body(again.build())["prompt"][:plen] for _ in range(groups)] == [
        list(h) for h in heads[:groups]
    ]


def test_shared_prefix_len_still_one_group_with_a_unique_start() -> None:
    f = _factory(input_len=24, output_len=4, shared_prefix_len=8)
    prompts = [loads_body(f.build())["prompt"] for _ in range(10)]
    assert len({tuple(p[:8]) for p in prompts}) == 1
    assert len({tuple(p[8:12]) for p in prompts}) == 10


# -- the stream parser's extras ------------------------------------------------------------------


def _feed(st: StreamState, events: list[dict[str, Any]]) -> None:
    for i, ev in enumerate(events):
        wire = json.dumps(ev, separators=(",", ":"))  # compact, as vLLM's pydantic dumps
        st.feed(b"data: " + wire.encode() + b"\n\n", 1000 * (i + 1))
    st.feed(b"data: [DONE]\n\n", 1000 * (len(events) + 1))


def _usage(n: int, **extra: Any) -> dict[str, Any]:
    return {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n, **extra}


def test_cached_tokens_come_from_the_final_usage_chunk() -> None:
    events = [
        {"choices": [{"index": 0, "text": "a"}], "usage": _usage(1)},
        {"choices": [{"index": 0, "text": "b"}], "usage": _usage(2)},
        {"choices": [], "usage": _usage(2, prompt_tokens_details={"cached_tokens": 16})},
    ]
    st = StreamState()
    _feed(st, events)
    assert (st.error, st.cached_tokens, st.output_tokens, st.prompt_tokens) == (None, 16, 2, 20)
    # vLLM leaves it null when nothing was cached: no count, and no error either
    events[-1] = {"choices": [], "usage": _usage(2, prompt_tokens_details=None)}
    st = StreamState()
    _feed(st, events)
    assert (st.error, st.cached_tokens, st.output_tokens) == (None, -1, 2)


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_reasoning_and_answer_are_told_apart(key: str) -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    events = [
        {**role, "usage": _usage(0)},
        {"choices": [{"index": 0, "delta": {key: "hm"}}], "usage": _usage(2)},
        {"choices": [{"index": 0, "delta": {key: ""}}], "usage": _usage(3)},  # held-back text
        {"choices": [{"index": 0, "delta": {"content": 'say "hi"\n'}}], "usage": _usage(4)},
        {"choices": [{"index": 0, "delta": {"content": "\\é"}}], "usage": _usage(6)},
    ]
    st = RichStream(keep_text=True, chat=True)
    _feed(st, events)
    assert st.error is None
    assert (st.reasoning_tokens, st.answer_tokens, st.output_tokens) == (3, 3, 6)
    assert st.reasoning_first_ns == 2000 and st.answer_first_ns == 4000
    assert st.first_ns == 2000  # TTFT: the first generated token of either kind
    # the answer's text, as escaped JSON, exactly what was said
    assert json.loads(b'"' + st.text_json() + b'"') == 'say "hi"\n\\é'


def test_string_end_skips_escaped_quotes() -> None:
    body = b'"content":"a\\"b\\\\" , "x":"y"'
    start = body.index(b':"') + 2
    end = string_end(body, start, len(body))
    assert json.loads(b'"' + body[start:end] + b'"') == 'a"b\\'


# -- conversations end to end --------------------------------------------------------------------


def test_turns_3_chat_sends_1_3_5_messages_carrying_the_actual_answers(tmp_path: Path) -> None:
    with WorkloadServer() as srv:
        r = run_cli(
            "run", "--url", srv.url, "--api", "chat", "--turns", "3", "--think-time", "0.01",
            "--num-requests", "8", "--request-rate", "40", *FAST,
            json_path=tmp_path / "o.json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        reqs = load_requests(srv, 6)
        sizes = Counter(len(b["messages"]) for _, b in reqs)
        assert sizes == {1: 8, 3: 8, 5: 8}, sizes
        # every earlier user message and the assistant's actual output, byte for byte
        by_msgs = {json.dumps(b["messages"]): i for i, b in reqs}
        for _, b in reqs:
            m = b["messages"]
            assert [x["role"] for x in m] == ["user", "assistant"] * (len(m) // 2) + ["user"]
            for j in range(1, len(m), 2):
                earlier = by_msgs[json.dumps(m[:j])]
                assert m[j]["content"] == srv.answers[earlier]
        d = r.data
        assert d["completed"] == 24 and d["failed"] == 0
        assert set(d["by_turn"]) == {"1", "2", "3"}
        for t in ("1", "2", "3"):
            assert d["by_turn"][t]["completed"] == 8
            assert d["by_turn"][t]["ttft_ms"]["count"] == 8
        # the server's cache (16-token blocks of words) holds each history from turn 2 on
        assert d["by_turn"]["1"]["cached_prompt_tokens"] == 0
        assert d["by_turn"]["2"]["cached_prompt_tokens"] > 0
        assert d["by_turn"]["3"]["cached_prompt_tokens"] > d["by_turn"]["2"]["cached_prompt_tokens"]
        assert d["cached_prompt_tokens"] == sum(
            d["by_turn"][t]["cached_prompt_tokens"] for t in ("1", "2", "3")
        )
        assert d["prompt_tokens"] == d["input_tokens"]
        assert "turn" in r.stdout and "3-turn conversations" in r.stdout


def test_turns_over_completions_concatenate_the_history(tmp_path: Path) -> None:
    with WorkloadServer() as srv:
        r = run_cli(
            "run", "--url", srv.url, "--turns", "2", "--num-requests", "3",
            "--request-rate", "50", *FAST, json_path=tmp_path / "o.json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "concatenated into one text prompt" in r.stderr
        reqs = load_requests(srv, 6)
        firsts = {b["prompt"]: i for i, b in reqs if isinstance(b["prompt"], str)}
        seconds = [b["prompt"] for _, b in reqs if b["prompt"].count("\n\n") >= 2]
        assert len(seconds) == 3
        for p in seconds:
            first = next(f for f in firsts if p.startswith(f + "\n\n"))
            rest = p[len(first) + 2 :]
            assert rest.startswith(srv.answers[firsts[first]] + "\n\n")
        assert r.data["by_turn"]["2"]["completed"] == 3


def test_closed_loop_counts_conversations_not_requests(tmp_path: Path) -> None:
    with WorkloadServer() as srv:
        r = run_cli(
            "run", "--url", srv.url, "--api", "chat", "--turns", "3", "--think-time", "0.15",
            "--concurrency", "2", "--num-requests", "4", *FAST, json_path=tmp_path / "o.json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        reqs = load_requests(srv, 6)
        assert len(reqs) == 12
        firsts = sorted(srv.spans[i][0] for i, b in reqs if len(b["messages"]) == 1)
        lasts = sorted(srv.spans[i][1] for i, b in reqs if len(b["messages"]) == 5)
        # conversations 3 and 4 start only when conversations 1 and 2 have ended, though
        # every think time leaves fewer than 2 requests in flight
        assert firsts[2] >= lasts[0] - 0.002 and firsts[3] >= lasts[1] - 0.002


def test_dataset_conversations_all_turns(tmp_path: Path) -> None:
    data = [
        {"conversations": [
            {"from": "human", "value": "one two three"}, {"from": "gpt", "value": "x" * 40},
            {"from": "human", "value": "four five"}, {"from": "gpt", "value": "y" * 20},
            {"from": "human", "value": "six"},
        ]},
        {"conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "seven"}, {"from": "gpt", "value": "z" * 8},
            {"from": "human", "value": "eight nine"},
        ]},
    ]  # fmt: skip
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    with WorkloadServer() as srv:
        r = run_cli(
            "run", "--url", srv.url, "--api", "chat", "--dataset", str(path), "--turns", "all",
            "--num-requests", "2", "--request-rate", "50", "--output-len", "5",
            json_path=tmp_path / "o.json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        reqs = [b for b in srv.requests if "messages" in b and b["max_tokens"] != 3]
        users = sorted(b["messages"][-1]["content"] for b in reqs)
        assert users == sorted(["one two three", "four five", "six", "seven", "eight nine"])
        # each turn's output length from the reply in the file (≈ chars / 4)
        first = next(b for b in reqs if b["messages"][-1]["content"] == "one two three")
        assert first["max_tokens"] == 10
        by_turn = r.data["by_turn"]
        assert {k: v["completed"] for k, v in by_turn.items()} == {"1": 2, "2": 2, "3": 1}


def test_reasoning_streams_report_both_first_tokens(tmp_path: Path) -> None:
    with WorkloadServer(reasoning="reasoning", reasoning_tokens=3, token_delay_s=0.01) as srv:
        r = run_cli(
            "run", "--url", srv.url, "--api", "chat", "--num-requests", "6",
            "--request-rate", "50", *FAST, json_path=tmp_path / "o.json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        d = r.data
        assert d["reasoning_tokens"] == 6 * 3 and d["answer_tokens"] == 6 * 3
        assert d["ttft_reasoning_ms"]["count"] == 6 and d["ttft_answer_ms"]["count"] == 6
        # TTFT keeps its definition: the first generated token, here a reasoning one
        assert d["ttft_ms"]["p50"] == d["ttft_reasoning_ms"]["p50"]
        assert d["ttft_answer_ms"]["p50"] >= d["ttft_reasoning_ms"]["p50"] + 20  # 3 × 10 ms
        assert d["config"]["dialect"]["reasoning"] is True
        assert "TTFT answer" in r.stdout and "reasoning" in r.stdout


# -- text prompts, resets, errors ---------------------------------------------------------------


def test_text_prompts_exact_length_group_prefix_and_unique_start(tmp_path: Path) -> None:
    with WorkloadServer() as srv:
        r = run_cli(
            "run", "--url", srv.url, "--prompt-format", "text", "--prefix-groups", "2",
            "--prefix-len", "16", "--num-requests", "12", "--request-rate", "100", *FAST,
            json_path=tmp_path / "o.json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        prompts = [b["prompt"] for _, b in load_requests(srv, 6)]
        assert len(prompts) == 12 and all(isinstance(p, str) for p in prompts)
        assert all(count_words(p) == 40 for p in prompts), [count_words(p) for p in prompts]
        words = [p.split() for p in prompts]
        heads = [tuple(w[:16]) for w in words]
        assert len(set(heads)) == 2 and all(h == heads[i % 2] for i, h in enumerate(heads))
        assert len({tuple(w[16:20]) for w in words}) == 12
        assert r.data["workload"]["prompts_as"] == "text"
        assert r.data["config"]["workload"]["prompt_format"] == "text"


def test_reset_prefix_cache_before_the_run(tmp_path: Path) -> None:
    with WorkloadServer() as srv:
        r = run_cli(
            "run", "--url", srv.url, "--reset-prefix-cache", "--num-requests", "2", *FAST,
            json_path=tmp_path / "o.json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert srv.resets == 1
        assert any("prefix cache reset" in n for n in r.data["notes"])


def test_reset_prefix_cache_says_when_the_engine_has_none(
    fault_server: Any, tmp_path: Path
) -> None:
    r = run_cli(
        "run", "--url", fault_server.url, "--reset-prefix-cache", "--num-requests", "2", *FAST,
        json_path=tmp_path / "o.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "no working reset" in r.stderr
    assert any("no working reset" in n for n in r.data["notes"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--prefix-groups", "4"], "go together"),
        (["--prefix-groups", "4", "--prefix-len", "100"], "multiple of 16"),
        (["--prefix-groups", "2", "--prefix-len", "1024"], "no room"),
        (["--prefix-groups", "2", "--prefix-len", "16", "--shared-prefix-len", "8"], "give one"),
        (["--turns", "all"], "needs a --dataset"),
        (["--turns", "0"], "at least 1 turn"),
        (["--think-time", "soon"], "think time"),
        (["--trace-speed", "0"], "--trace-speed"),
    ],
)
def test_bad_workload_flags_are_one_line_errors(args: list[str], needle: str) -> None:
    r = run_cli("run", "--url", "http://127.0.0.1:9", *args)
    assert_one_line_error(r, needle)


# -- the simulator: prefix groups as the bar -------------------------------------------


@pytest.mark.slow
def test_sim_prefix_groups_cache_what_they_share(tmp_path: Path) -> None:
    """(n − G)·L / (n·input) of the prompt tokens are cached: each group's first request misses."""
    n = 40
    r = run_cli(
        "run", "--input-len", "2048", "--output-len", "8", "--prefix-groups", "4",
        "--prefix-len", "1024", "--num-requests", str(n), "--request-rate", "8",
        json_path=tmp_path / "o.json", timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = r.data
    expected = (n - 4) * 1024 / (n * 2048)
    assert d["prompt_tokens"] == n * 2048
    assert abs(d["cached_prompt_tokens"] / d["prompt_tokens"] - expected) <= 0.05
    server = d["server_prefix_cache"]
    assert server is not None and abs(server["hit_rate"] - expected) <= 0.05
    assert "prompt tokens cached" in r.stdout


def test_server_prefix_cache_from_counters_or_a_gauge() -> None:
    from llmtop.metrics.prefix import server_prefix_cache

    def s(h: float, q: float) -> dict[str, Any]:
        return {"raw": {"vllm:prefix_cache_hits_total": h, "vllm:prefix_cache_queries_total": q}}

    got = server_prefix_cache([s(100, 1000), s(150, 1100), s(400, 1600)])
    assert got == {"hit_rate": 0.5, "hit_tokens": 300, "query_tokens": 600, "source": "counters"}
    assert server_prefix_cache([s(100, 1000), s(5, 10)]) is None  # the server restarted
    gauge = server_prefix_cache([{"prefix_cache_hit_rate": 0.2}, {"prefix_cache_hit_rate": 0.4}])
    assert gauge is not None and gauge["hit_rate"] == pytest.approx(0.3)
    assert server_prefix_cache([{"raw": {}}, {"prefix_cache_hit_rate": None}]) is None
