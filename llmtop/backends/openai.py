"""Request bytes for the OpenAI-compatible streaming endpoints.

Bodies are assembled from pre-encoded pieces so a request costs a few microseconds to build:
only the first few prompt tokens change per request (random, so no two requests share a
prefix-cache block and the server does the full prefill every time).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmtop.config import Dialect, RunConfig
from llmtop.errors import ConfigError

UNIQUE_PREFIX_TOKENS = 4


@dataclass(frozen=True)
class Endpoint:
    """Where to connect and which path to post to."""

    host: str
    port: int
    ssl: bool
    base_path: str

    @property
    def host_header(self) -> str:
        default = 443 if self.ssl else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def parse_url(url: str) -> Endpoint:
    """Accept `http://host:port`, with or without a trailing `/v1`."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad --url {url!r}: expected http://HOST:PORT or https://HOST")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"bad --url {url!r}: {exc}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return Endpoint(parts.hostname, port, parts.scheme == "https", path)


def api_path(endpoint: Endpoint, api: str) -> str:
    return endpoint.base_path + ("/v1/chat/completions" if api == "chat" else "/v1/completions")


def body_fields(config: RunConfig, dialect: Dialect) -> dict[str, object]:
    """The request fields other than the prompt, limited to what the server accepts."""
    out: dict[str, object] = {"model": config.target.model}
    out["max_tokens"] = config.workload.output_len
    out["stream"] = True
    if dialect.include_usage:
        opts: dict[str, bool] = {"include_usage": True}
        if dialect.continuous_usage:
            opts["continuous_usage_stats"] = True
        out["stream_options"] = opts
    if config.workload.ignore_eos and dialect.ignore_eos:
        out["ignore_eos"] = True
    return out


def header_bytes(endpoint: Endpoint, path: str, config: RunConfig) -> bytes:
    """Everything of the request head but Content-Length and the final blank line."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        "User-Agent: llmtop",
    ]
    if config.target.api_key:
        lines.append(f"Authorization: Bearer {config.target.api_key}")
    lines.extend(f"{k}: {v}" for k, v in config.target.headers)
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


class RequestFactory:
    """Builds each request's bytes: a fixed head and body with a fresh random prompt prefix."""

    def __init__(self, config: RunConfig, endpoint: Endpoint) -> None:
        dialect = config.dialect
        self._rng = random.Random(config.workload.seed)
        self._head = header_bytes(endpoint, api_path(endpoint, config.target.api), config)
        fields = body_fields(config, dialect)
        rest = json.dumps(fields, separators=(",", ":"))[1:]  # without the leading "{"
        self._texts = [json.dumps(t).encode() for t in config.text_prompts]
        self._i = 0
        self._lo, self._hi = dialect.token_vocab
        n = config.workload.input_len
        if config.target.api == "chat":
            self._mode = "chat"
            self._pre = b'{"messages":[{"role":"user","content":'
            self._post = b"}]," + rest.encode()
        elif dialect.token_id_prompts:
            self._mode = "ids"
            self._unique = min(UNIQUE_PREFIX_TOKENS, n)
            fixed = [self._rng.randrange(self._lo, self._hi) for _ in range(n - self._unique)]
            tail = "".join(f",{t}" for t in fixed) if self._unique else ",".join(map(str, fixed))
            self._pre = b'{"prompt":['
            self._post = (tail + "]," + rest).encode()
        else:
            self._mode = "text"
            self._pre = b'{"prompt":'
            self._post = b"," + rest.encode()
        if self._mode != "ids" and not self._texts:
            raise ConfigError("text prompts are needed for this server but none were prepared")

    def build(self) -> bytes:
        if self._mode == "ids":
            rng, lo, hi = self._rng, self._lo, self._hi
            ids = ",".join([str(rng.randrange(lo, hi)) for _ in range(self._unique)])
            body = self._pre + ids.encode() + self._post
        else:
            text = self._texts[self._i % len(self._texts)]
            self._i += 1
            body = self._pre + text + self._post
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body
