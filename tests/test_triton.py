"""`--api triton`: Triton's generate_stream request bytes, and its stream through llmtop's parser.

The wire is Triton's generate extension (server `docs/protocol/extension_generate.md`) with
the TensorRT-LLM backend's tensor names (tensorrtllm_backend `README.md`): events
`data: {"model_name","model_version","text_output",...}`, no `[DONE]` (the chunked response
just ends), and `data: {"error": ...}` after a 200. Fixtures: tests/fixtures/engines.
"""

from __future__ import annotations

import asyncio
import json

import httptools
import pytest

from llmtop.backends.http import ConnectionPool, Exchange
from llmtop.backends.openai import parse_url
from llmtop.backends.sse import StreamState
from llmtop.backends.triton import TritonRequestFactory, generate_stream_path, triton_fields
from llmtop.config import RunConfig, Target, Workload
from llmtop.errors import ConfigError, TargetError
from llmtop.metrics import records
from tests.fixtures.engines.fake_engine import FakeEngine, Reply, Stream, fixture, sse_events


def _config(url: str = "http://127.0.0.1:8000", model: str = "ensemble", **kw) -> RunConfig:
    return RunConfig(
        Target(url, api="completions", model=model, api_key=kw.pop("api_key", None)),
        Workload(input_len=16, output_len=kw.pop("output_len", 4), ignore_eos=kw.pop("eos", True)),
        text_prompts=kw.pop("texts", ("hello world", 'say "hi"')),
    )


class _Req:
    """Collects what httptools parses out of the request bytes."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def _parse_request(raw: bytes) -> _Req:
    req = _Req()
    p = httptools.HttpRequestParser(req)
    p.feed_data(raw)
    assert req.done and p.get_method() == b"POST"
    return req


def test_request_bytes_are_a_generate_stream_post():
    factory = TritonRequestFactory(_config(api_key="sk-x"), parse_url("http://127.0.0.1:8000"))
    first, second, third = (_parse_request(factory.build()) for _ in range(3))
    assert first.url == b"/v2/models/ensemble/generate_stream"
    assert first.headers[b"authorization"] == b"Bearer sk-x"
    assert first.headers[b"accept"] == b"text/event-stream"
    body = json.loads(first.body)
    assert body == {"text_input": "hello world", "max_tokens": 4, "stream": True, "min_tokens": 4}
    assert json.loads(second.body)["text_input"] == 'say "hi"'
    assert json.loads(third.body)["text_input"] == "hello world"  # prompts cycle


def test_min_tokens_only_when_ignoring_eos_and_model_is_quoted():
    cfg = _config(eos=False)
    assert triton_fields(cfg) == {"max_tokens": 4, "stream": True}
    assert generate_stream_path(parse_url("http://h:1/v1"), "my model/v2") == (
        "/v2/models/my%20model%2Fv2/generate_stream"
    )


def test_model_and_text_prompts_are_required():
    ep = parse_url("http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match="--model"):
        TritonRequestFactory(_config(model=""), ep)
    with pytest.raises(ConfigError, match="text prompts"):
        TritonRequestFactory(_config(texts=()), ep)


def test_sse_parser_counts_one_token_per_triton_event_without_done():
    s = StreamState()
    for i, ev in enumerate(sse_events(fixture("triton_generate_stream.sse"))):
        s.feed(ev, 1000 + i)
    assert s.error is None
    assert s.done is False  # no [DONE]: the HTTP layer ends it when the response ends
    assert list(s.chunk_tokens) == [1, 1, 1, 1]
    assert s.output_tokens == 4
    assert s.first_ns == 1000 and s.last_ns == 1003


def test_sse_parser_reports_an_error_event_after_the_200():
    s = StreamState()
    for ev in sse_events(fixture("triton_generate_stream_error.sse")):
        s.feed(ev, 5)
    assert s.error == records.STREAM_ERROR
    assert "Encountered error for requestId 1" in s.detail
    assert list(s.chunk_tokens) == [1, 1]


def test_sse_parser_with_the_whole_stream_in_one_piece():
    s = StreamState()
    s.feed(fixture("triton_generate_stream.sse"), 7)
    assert list(s.chunk_tokens) == [1, 1, 1, 1]


async def _one_request(url: str, raw: bytes) -> records.RequestRecord:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[records.RequestRecord] = loop.create_future()
    ep = parse_url(url)
    pool = ConnectionPool(loop, ep.host, ep.port, False, 5.0, lambda ex, rec: done.set_result(rec))
    pool.submit(Exchange(0, 0, True), raw)
    try:
        return await asyncio.wait_for(done, 10)
    finally:
        pool.close()


def test_a_cleanly_ended_stream_is_a_success_over_real_http():
    events = sse_events(fixture("triton_generate_stream.sse"))
    routes = {"POST /v2/models/ensemble/generate_stream": Stream(events)}
    with FakeEngine(routes) as url:
        raw = TritonRequestFactory(_config(url), parse_url(url)).build()
        rec = asyncio.run(_one_request(url, raw))
    assert rec.error is None, rec.detail
    assert rec.output_tokens == 4
    assert 0 < rec.first_ns < rec.last_ns <= rec.end_ns


def test_an_error_event_after_200_fails_the_request_over_real_http():
    events = sse_events(fixture("triton_generate_stream_error.sse"))
    routes = {"POST /v2/models/ensemble/generate_stream": Stream(events)}
    with FakeEngine(routes) as url:
        raw = TritonRequestFactory(_config(url), parse_url(url)).build()
        rec = asyncio.run(_one_request(url, raw))
    assert rec.error == records.STREAM_ERROR
    assert "Encountered error for requestId 1" in rec.detail


def test_an_empty_stream_is_cut_not_success():
    routes = {"POST /v2/models/ensemble/generate_stream": Stream([])}
    with FakeEngine(routes) as url:
        raw = TritonRequestFactory(_config(url), parse_url(url)).build()
        rec = asyncio.run(_one_request(url, raw))
    assert rec.error == records.STREAM_CUT


def _preflight(url: str, model: str = "ensemble"):
    import aiohttp

    from llmtop.backends.triton import triton_preflight

    async def go():
        async with aiohttp.ClientSession() as session:
            return await triton_preflight(session, url, _config(url, model=model), {})

    return asyncio.run(go())


def test_preflight_checks_readiness_and_one_stream():
    events = sse_events(fixture("triton_generate_stream.sse"))
    routes = {
        "GET /v2/health/ready": Reply(b""),
        "GET /v2/models/ensemble/ready": Reply(b""),
        "POST /v2/models/ensemble/generate_stream": Stream(events),
    }
    with FakeEngine(routes) as url:
        dialect, notes = _preflight(url)
        with pytest.raises(TargetError, match="model 'other' is not ready"):
            _preflight(url, model="other")
    assert dialect.token_id_prompts is False and dialect.ignore_eos is True
    assert notes


def test_preflight_drops_min_tokens_when_the_model_has_no_such_tensor():
    events = sse_events(fixture("triton_generate_stream.sse"))

    def generate(body: bytes) -> Reply | Stream:
        if b"min_tokens" in body:
            return Reply(b'{"error":"unexpected inference input \'min_tokens\'"}', status=400)
        return Stream(events)

    routes = {
        "GET /v2/health/ready": Reply(b""),
        "GET /v2/models/ensemble/ready": Reply(b""),
        "POST /v2/models/ensemble/generate_stream": generate,
    }
    with FakeEngine(routes) as url:
        dialect, notes = _preflight(url)
    assert dialect.ignore_eos is False
    assert any("min_tokens" in n for n in notes)


def test_preflight_of_a_server_that_is_not_ready_or_errors_in_stream():
    not_ready = {"GET /v2/health/ready": Reply(b"", status=503)}
    with FakeEngine(not_ready) as url, pytest.raises(TargetError, match="not ready"):
        _preflight(url)
    events = sse_events(fixture("triton_generate_stream_error.sse"))
    routes = {
        "GET /v2/health/ready": Reply(b""),
        "GET /v2/models/ensemble/ready": Reply(b""),
        "POST /v2/models/ensemble/generate_stream": Stream(events),
    }
    with FakeEngine(routes) as url, pytest.raises(TargetError, match="Encountered error"):
        _preflight(url)
