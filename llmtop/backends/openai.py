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

from llmtop.backends.prompts import TracePrompts, compose_text, group_prefix_ids, json_text
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

    An entry is (prefix bytes, number of fresh random tokens, suffix bytes). Synthetic prompts
    (token ids, or text with a `unique_words` pool) get a few random tokens right after any
    shared or group prefix, so no two requests share a prefix-cache block beyond it; dataset
    prompts (and text when the server gave no way to size words) are whole requests built up
    front, so `build()` stays a few microseconds whatever the workload. Trace rows are built
    per request from the blocks their hash ids name (`llmtop.backends.prompts.TracePrompts`).

    Prefix groups: request i belongs to group i mod G, so with n requests each group's first
    request fills the cache and the other n - G can hit it.
    """

    def __init__(self, config: RunConfig, endpoint: Endpoint) -> None:
        dialect = config.dialect
        wl = config.workload
        self._rng = random.Random(wl.seed)
        self.head = header_bytes(endpoint, api_path(endpoint, config.target.api), config)
        self._fields = body_fields(config, dialect)
        self._rests: dict[int, bytes] = {}
        self._i = 0
        self._lo, self._hi = dialect.token_vocab
        self._words = config.unique_words
        self._trace: TracePrompts | None = None
        self._texts: list[tuple[bytes, int, bytes, int]] = []
        self._out_dist = wl.output_dist
        self._out_fixed = wl.output_len
        self.chat = config.target.api == "chat"
        self._text_pre = b'{"messages":[{"role":"user","content":"' if self.chat else b'{"prompt":"'
        self._text_sep = b'"}],' if self.chat else b'",'
        entries: list[tuple[bytes, int, bytes]] = []
        if config.trace:
            if self.chat or not dialect.token_id_prompts:
                raise ConfigError("a trace is replayed as token-id prompts (--api completions)")
            self._mode = "trace"
            self._trace = TracePrompts(self._lo, self._hi, wl.seed)
            self._trace.prepare(config.trace)  # before the load starts, not while it runs
            self._rows = config.trace
        elif config.dataset:
            self._mode = "dataset"
            for text, out in config.dataset:
                post = self._text_sep + self.rest(out or self.out_len())
                entries.append((self._text_pre + json_text(text), 0, post))
        elif config.conversations:
            self._mode = "conversations"  # a dataset's turns (llmtop.load.conversations)
        elif not self.chat and dialect.token_id_prompts and wl.turns == 1:
            self._mode = "ids"
            entries = self._id_entries(wl)
        else:
            self._mode = "chat" if self.chat else "text"
            if not config.text_prompts:
                raise ConfigError("text prompts are needed for this server but none were prepared")
            self._texts = self._text_entries(config)
            entries = [
                (self._text_pre + pre, u, post + self._text_sep + self.rest(out_len))
                for pre, u, post, out_len in self._texts
            ]
        self._entries = entries
        # Whole requests where nothing changes per request (dataset prompts, unsized text).
        self._fixed = (
            [self.wrap(pre + post) for pre, _, post in entries]
            if entries and all(u == 0 for _, u, _ in entries)
            else None
        )

    @property
    def mode(self) -> str:
        """ "ids", "text", "chat", "dataset" or "trace": how prompts are made."""
        return self._mode

    def rest(self, out_len: int) -> bytes:
        """The body's other fields for `out_len` output tokens, without the leading "{"."""
        r = self._rests.get(out_len)
        if r is None:
            text = json.dumps({**self._fields, "max_tokens": out_len}, separators=(",", ":"))
            r = self._rests[out_len] = text[1:].encode()
        return r

    def out_len(self) -> int:
        """One request's output length (a draw when --output-len is a distribution)."""
        dist = self._out_dist
        return dist.draw(self._rng) if dist else self._out_fixed

    def _lengths(self, wl: Workload) -> list[tuple[int, int]]:
        """(input, output) lengths to cycle through: one pair, or a pool of draws."""
        varying = wl.input_dist is not None or wl.output_dist is not None
        return [
            (wl.input_dist.draw(self._rng) if wl.input_dist else wl.input_len, self.out_len())
            for _ in range(POOL if varying else 1)
        ]

    def _groups(self, wl: Workload) -> tuple[int, int]:
        """(number of prefix groups, prefix length): --prefix-groups or --shared-prefix-len."""
        if wl.prefix_groups > 0 and wl.prefix_len > 0:
            return wl.prefix_groups, wl.prefix_len
        return (1, wl.shared_prefix_len) if wl.shared_prefix_len > 0 else (1, 0)

    def _id_entries(self, wl: Workload) -> list[tuple[bytes, int, bytes]]:
        """Token-id prompts: group prefix, fresh random ids, then a fixed tail.

        Entry j * G + g is pool draw j in group g, so request i is in group i mod G.
        """
        rng, lo, hi = self._rng, self._lo, self._hi
        lengths = self._lengths(wl)
        longest = max(n for n, _ in lengths)
        n_groups, plen = self._groups(wl)
        plen = min(plen, longest)
        if wl.prefix_groups > 0:
            prefixes = [group_prefix_ids(wl.seed, g, plen, lo, hi) for g in range(n_groups)]
        else:  # --shared-prefix-len: drawn from the request stream, as it always was
            prefixes = [[rng.randrange(lo, hi) for _ in range(plen)]]
        fixed = [rng.randrange(lo, hi) for _ in range(longest)]
        entries = []
        for n, out_len in lengths:
            for shared in prefixes:
                p = min(len(shared), n)
                u = min(UNIQUE_PREFIX_TOKENS, n - p)
                f = n - p - u
                head = ",".join(map(str, shared[:p]))
                pre = b'{"prompt":[' + head.encode() + (b"," if head and u else b"")
                body = "".join(f",{t}" for t in fixed[:f])  # f > 0 only when u > 0
                entries.append((pre, u, (body + "],").encode() + self.rest(out_len)))
        return entries

    def _text_entries(self, config: RunConfig) -> list[tuple[bytes, int, bytes, int]]:
        """Text prompts as (escaped prefix + unique-start separator, words, escaped body, out).

        The text is `compose_text(group prefix, unique words, body)`; without a pool of
        one-token words (a server without /tokenize) the texts go whole, as prepared.
        """
        wl = config.workload
        bodies = config.text_prompts
        prefixes = list(config.prefix_texts) or [""]
        u = UNIQUE_PREFIX_TOKENS if self._words else 0
        n = POOL if wl.output_dist else len(bodies)
        out: list[tuple[bytes, int, bytes, int]] = []
        for i in range(n):
            body = bodies[i % len(bodies)]
            out_len = self.out_len()
            for prefix in prefixes:
                if not u:
                    out.append((json_text(compose_text(prefix, (), body)), 0, b"", out_len))
                    continue
                pre = json_text(prefix + " ") if prefix else b""
                post = json_text(" " + body) if body else b""
                out.append((pre, u, post, out_len))
        return out

    def unique_start(self, u: int) -> bytes:
        """`u` fresh random tokens: ids ("17,503,...") or one-token words ("ka lo mi ne")."""
        rng = self._rng
        if self._mode == "ids":
            lo, hi = self._lo, self._hi
            return ",".join([str(rng.randrange(lo, hi)) for _ in range(u)]).encode()
        words = self._words
        return " ".join([rng.choice(words) for _ in range(u)]).encode()

    def user_text(self, first: bool = True) -> tuple[bytes, int]:
        """The next synthetic text prompt, escaped, and its output length (conversations).

        Cycles through the same texts as `build()`: a conversation's first message carries
        its prefix group and a unique start; later messages (`first=False`) only the unique
        start and the body, so each turn adds --input-len minus the prefix length tokens.
        """
        if not self._texts:
            raise ConfigError("conversations need text prompts, and none were prepared")
        i = self._i
        self._i = i + 1
        pre, u, post, out_len = self._texts[i % len(self._texts)]
        if not u:
            return pre + post, out_len
        start = self.unique_start(u)
        return (pre + start + post if first else start + post), out_len

    def wrap(self, body: bytes) -> bytes:
        """A whole request around a JSON body (head, Content-Length, body)."""
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def build(self) -> bytes:
        i = self._i
        self._i = i + 1
        if self._fixed is not None:
            return self._fixed[i % len(self._fixed)]
        if self._trace is not None:
            row = self._rows[i % len(self._rows)]
            body = b'{"prompt":[' + self._trace.token_ids(row) + b"]," + self.rest(row[2])
            return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        pre, u, post = self._entries[i % len(self._entries)]
        body = pre + self.unique_start(u) + post
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body
