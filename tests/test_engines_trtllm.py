"""trtllm-serve's request validation: unknown fields are a 400, and llmtop copes.

trtllm-serve's request models derive from `OpenAIBaseModel` with `extra="forbid"`
(`tensorrt_llm/serve/openai_protocol.py`), and `validation_exception_handler` in
`tensorrt_llm/serve/openai_server.py` answers any validation error with HTTP 400 and
`{"error": str(exc)}` (fixture: tests/fixtures/engines/trtllm_unknown_field_400.json). Some
versions' `StreamOptions` have no `continuous_usage_stats`: llmtop's preflight must drop that
field (and only that one) and go on.
"""

from __future__ import annotations

import asyncio
import json

from llmtop.backends.http import error_detail
from llmtop.config import RunConfig, Target, Workload
from llmtop.engines.detect import TRTLLM, detect_engine
from llmtop.preflight import run_preflight
from tests.fixtures.engines.fake_engine import FakeEngine, Reply, Stream, fixture

COMPLETION_FIELDS = {
    "model", "prompt", "max_tokens", "stream", "stream_options", "ignore_eos", "min_tokens",
    "temperature", "top_p", "n", "seed", "stop", "echo", "logprobs", "best_of",
}  # fmt: skip
STREAM_OPTION_FIELDS = {"include_usage"}  # the older StreamOptions: no continuous_usage_stats


def _completion(body: bytes) -> Reply | Stream:
    req = json.loads(body)
    unknown = set(req) - COMPLETION_FIELDS
    unknown |= {f"stream_options.{k}" for k in req.get("stream_options", {})} - {
        f"stream_options.{k}" for k in STREAM_OPTION_FIELDS
    }
    if unknown:
        return Reply(fixture("trtllm_unknown_field_400.json"), status=400)
    n = req["max_tokens"]
    events = []
    for i in range(n):
        chunk = {
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": req["model"],
            "choices": [{"index": 0, "text": f" t{i}", "logprobs": None,
                         "finish_reason": "length" if i == n - 1 else None}],
        }  # fmt: skip
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    if req.get("stream_options", {}).get("include_usage"):
        usage = {"prompt_tokens": len(req["prompt"]), "completion_tokens": n,
                 "total_tokens": len(req["prompt"]) + n}  # fmt: skip
        final = {"id": "cmpl-1", "object": "text_completion", "created": 1,
                 "model": req["model"], "choices": [], "usage": usage}  # fmt: skip
        events.append(b"data: " + json.dumps(final).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return Stream(events)


ROUTES = {
    "GET /version": Reply(fixture("trtllm_version.json")),
    "GET /v1/models": Reply(fixture("trtllm_models.json")),
    "GET /health": Reply(b""),
    "POST /v1/completions": _completion,
}


def test_the_400_body_reads_as_one_line():
    detail = error_detail(fixture("trtllm_unknown_field_400.json"))
    assert "extra_forbidden" in detail and "continuous_usage_stats" in detail


def test_preflight_drops_only_the_refused_field():
    with FakeEngine(ROUTES, server_header="uvicorn") as url:
        assert detect_engine(url).name == TRTLLM
        config = RunConfig(Target(url), Workload(input_len=8, output_len=4))
        pre = asyncio.run(run_preflight(config, timeout_s=10))
    assert pre.model == "TinyLlama-1.1B-Chat-v1.0"
    assert pre.dialect.continuous_usage is False
    assert pre.dialect.include_usage is True  # still sent: the server accepts it
    assert pre.dialect.ignore_eos is True
    assert pre.dialect.token_id_prompts is True
    assert any("extra_forbidden" in n for n in pre.notes), pre.notes
