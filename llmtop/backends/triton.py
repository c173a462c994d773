"""Request bytes for Triton's `generate_stream` (the TensorRT-LLM backend's ensemble / BLS).

Same interface as `llmtop.backends.openai.RequestFactory`, so the load driver picks one by
`config.target.api` and the rest of the hot path (HTTP client, SSE parser) is shared.

The wire (Triton's generate extension, `docs/protocol/extension_generate.md`; the tensor
names are the model's, those of tensorrtllm_backend's `all_models/inflight_batcher_llm`):

    POST /v2/models/<model>/generate_stream
    {"text_input": "...", "max_tokens": N, "stream": true, "min_tokens": N}

Each answer event is `data: {"model_name", "model_version", "text_output", ...}` - one per
engine step - with no `[DONE]`: the chunked response just ends. An error can still arrive
after the 200 as `data: {"error": "..."}`. There is no `ignore_eos`: `min_tokens` equal to
`max_tokens` gives exact output lengths. Prompts are text (Triton tokenizes in its
preprocessing model), sized by the preflight.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import quote

from llmtop.backends.http import client_error_cause, error_detail
from llmtop.backends.openai import Endpoint, header_bytes
from llmtop.config import Dialect, RunConfig
from llmtop.errors import ConfigError, TargetError


def generate_stream_path(endpoint: Endpoint, model: str) -> str:
    return f"{endpoint.base_path}/v2/models/{quote(model, safe='')}/generate_stream"


def triton_fields(config: RunConfig) -> dict[str, object]:
    """The request fields other than `text_input`."""
    out: dict[str, object] = {"max_tokens": config.workload.output_len, "stream": True}
    if config.workload.ignore_eos:
        out["min_tokens"] = config.workload.output_len
    return out


class TritonRequestFactory:
    """Builds each request's bytes: a fixed head, then the next text prompt and fixed fields."""

    def __init__(self, config: RunConfig, endpoint: Endpoint) -> None:
        if not config.target.model:
            raise ConfigError(
                "--api triton needs --model (the Triton model to call, e.g. ensemble)"
            )
        if not config.text_prompts:
            raise ConfigError("text prompts are needed for Triton but none were prepared")
        path = generate_stream_path(endpoint, config.target.model)
        self._head = header_bytes(endpoint, path, config)
        rest = json.dumps(triton_fields(config), separators=(",", ":"))[1:]
        self._pre = b'{"text_input":'
        self._post = b"," + rest.encode()
        self._texts = [json.dumps(t).encode() for t in config.text_prompts]
        self._i = 0

    def build(self) -> bytes:
        text = self._texts[self._i % len(self._texts)]
        self._i += 1
        body = self._pre + text + self._post
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def triton_preflight(
    session: Any, base: str, config: RunConfig, headers: dict[str, str]
) -> tuple[Dialect, tuple[str, ...]]:
    """Before a Triton run: server ready, model ready, one short stream works.

    `session` is an aiohttp ClientSession (the preflight's). Triton has no /v1/models and no
    /tokenize: `--model` is required and text prompt lengths are approximate. A 400 naming
    `min_tokens` (a model without that tensor) drops it, as `ignore_eos` is dropped elsewhere.
    """
    import aiohttp

    model = config.target.model
    if not model:
        raise TargetError("--api triton needs --model (the Triton model, e.g. ensemble)")
    url = config.target.url
    try:
        async with session.get(f"{base}/v2/health/ready", headers=headers) as r:
            if r.status != 200:
                raise TargetError(f"{url} is not ready: /v2/health/ready answered {r.status}")
        async with session.get(
            f"{base}/v2/models/{quote(model, safe='')}/ready", headers=headers
        ) as r:
            if r.status != 200:
                raise TargetError(f"Triton model {model!r} is not ready at {url} (HTTP {r.status})")
        dialect = Dialect(token_id_prompts=False, continuous_usage=False, include_usage=False)
        notes: list[str] = ["Triton: one token per stream event; prompt lengths approximate"]
        body: dict[str, object] = {"text_input": "hello", "max_tokens": 3, "stream": True}
        if config.workload.ignore_eos:
            body["min_tokens"] = 3
        path = f"{base}/v2/models/{quote(model, safe='')}/generate_stream"
        for _ in range(2):
            async with session.post(path, json=body, headers=headers) as r:
                raw = await r.read()
            detail = error_detail(raw)
            if r.status == 400 and "min_tokens" in body and "min_tokens" in detail:
                body.pop("min_tokens")
                dialect = dataclasses.replace(dialect, ignore_eos=False)
                notes.append(f"model refused min_tokens; output lengths may vary ({detail})")
                continue
            if r.status != 200:
                raise TargetError(f"{path} answered a test request with HTTP {r.status}: {detail}")
            bad = [ln for ln in raw.splitlines() if b'"error"' in ln]
            if bad:
                why = error_detail(bad[0].removeprefix(b"data:").strip())
                raise TargetError(f"{url} sent an error in its stream: {why}")
            if b"data:" not in raw:
                raise TargetError(f"{path} answered 200 without any stream event")
            break
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TargetError(f"cannot talk to Triton at {url}: {client_error_cause(exc)}") from None
    return dialect, tuple(notes)
