"""Request bytes for the OpenAI-compatible streaming endpoints.

Bodies are assembled from pre-encoded pieces so a request costs a few microseconds to build:
only the first few prompt tokens change per request (random, so no two requests share a
prefix-cache block and the server does the full prefill every time).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmtop.config import Dialect, RunConfig, Workload
from llmtop.errors import ConfigError

UNIQUE_PREFIX_TOKENS = 4
POOL = 512  # distinct (input, output) length draws cycled through for distributions


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
    """Builds each request's bytes from pre-encoded pieces, cycling through a pool of entries.

    An entry is (prefix bytes, number of fresh random token ids, suffix bytes). Synthetic
    token-id prompts get a few random ids after any shared prefix, so no two requests share a
    prefix-cache block beyond it; text and dataset prompts are whole requests built up front,
    so `build()` stays a few microseconds whatever the workload.
    """

    def __init__(self, config: RunConfig, endpoint: Endpoint) -> None:
        dialect = config.dialect
        wl = config.workload
        self._rng = random.Random(wl.seed)
        self._head = header_bytes(endpoint, api_path(endpoint, config.target.api), config)
        fields = body_fields(config, dialect)
        self._i = 0
        self._lo, self._hi = dialect.token_vocab
        rests: dict[int, bytes] = {}

        def rest(out_len: int) -> bytes:  # the other fields, without the leading "{"
            if out_len not in rests:
                text = json.dumps({**fields, "max_tokens": out_len}, separators=(",", ":"))
                rests[out_len] = text[1:].encode()
            return rests[out_len]

        chat = config.target.api == "chat"
        text_pre = b'{"messages":[{"role":"user","content":' if chat else b'{"prompt":'
        text_sep = b"}]," if chat else b","
        entries: list[tuple[bytes, int, bytes]] = []
        if config.dataset:
            self._mode = "dataset"
            for text, out in config.dataset:
                out_len = out or self._out_len(wl)
                entries.append((text_pre + json.dumps(text).encode(), 0, text_sep + rest(out_len)))
        elif not chat and dialect.token_id_prompts:
            self._mode = "ids"
            entries = self._id_entries(wl, rest)
        else:
            self._mode = "chat" if chat else "text"
            texts = [json.dumps(t).encode() for t in config.text_prompts]
            if not texts:
                raise ConfigError("text prompts are needed for this server but none were prepared")
            n = POOL if wl.output_dist else len(texts)
            for i in range(n):
                post = text_sep + rest(self._out_len(wl))
                entries.append((text_pre + texts[i % len(texts)], 0, post))
        self._entries = entries
        # Whole requests where nothing changes per request (text and dataset prompts).
        self._fixed = (
            [self._wrap(pre + post) for pre, _, post in entries]
            if all(u == 0 for _, u, _ in entries)
            else None
        )

    def _out_len(self, wl: Workload) -> int:
        return wl.output_dist.draw(self._rng) if wl.output_dist else wl.output_len

    def _id_entries(
        self, wl: Workload, rest: Callable[[int], bytes]
    ) -> list[tuple[bytes, int, bytes]]:
        """Token-id prompts: shared prefix, fresh random ids, then a fixed tail."""
        rng, lo, hi = self._rng, self._lo, self._hi
        varying = wl.input_dist is not None or wl.output_dist is not None
        lengths = [
            (
                wl.input_dist.draw(rng) if wl.input_dist else wl.input_len,
                self._out_len(wl),
            )
            for _ in range(POOL if varying else 1)
        ]
        longest = max(n for n, _ in lengths)
        shared = [rng.randrange(lo, hi) for _ in range(min(wl.shared_prefix_len, longest))]
        fixed = [rng.randrange(lo, hi) for _ in range(longest)]
        entries = []
        for n, out_len in lengths:
            p = min(len(shared), n)
            u = min(UNIQUE_PREFIX_TOKENS, n - p)
            f = n - p - u
            head = ",".join(map(str, shared[:p]))
            pre = b'{"prompt":[' + head.encode() + (b"," if head and u else b"")
            body = "".join(f",{t}" for t in fixed[:f])  # f > 0 only when u > 0
            entries.append((pre, u, (body + "],").encode() + rest(out_len)))
        return entries

    def _wrap(self, body: bytes) -> bytes:
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def build(self) -> bytes:
        i = self._i
        self._i = i + 1
        if self._fixed is not None:
            return self._fixed[i % len(self._fixed)]
        pre, u, post = self._entries[i % len(self._entries)]
        rng, lo, hi = self._rng, self._lo, self._hi
        ids = ",".join([str(rng.randrange(lo, hi)) for _ in range(u)])
        body = pre + ids.encode() + post
        return self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body
