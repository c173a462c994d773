"""The hot-path parser for OpenAI-style SSE token streams.

Per chunk it does a byte scan and appends one timestamp; JSON is parsed only for an error
event. Tokens per chunk come from the stream's own `usage` when the server sends it on every
chunk (vLLM's `continuous_usage_stats`): a chunk that raised `completion_tokens` by k carries k
tokens, and a chunk that did not raise it (chat's role-only first chunk, the final usage chunk)
carries none. Servers that put usage on the last chunk only (llama.cpp) fall back to "a chunk
from the engine carries one token (see `_scan_carries_token`)", and the final usage gives the total.
"""

from __future__ import annotations

import json
import re
from array import array

from llmtop.metrics import records

_INT = re.compile(rb"\s*(\d+)")
_COMPLETION = b'"completion_tokens":'
_PROMPT = b'"prompt_tokens":'
_CACHED = b'"cached_tokens":'  # usage.prompt_tokens_details.cached_tokens (prefix cache)
_EMPTY_CHOICES = b'"choices":[]'
_EMPTY_TEXT = (b'"text":""', b'"content":""', b'"content":null')


def _scan_carries_token(body: bytes, p: int, e: int) -> bool:
    """Without per-chunk usage: does this choices-chunk stand for a generated token?

    vLLM sends a chunk per engine step even when the token's text is still empty (a partial
    UTF-8 character held back), so empty text alone does not mean "no token". What does: chat's
    role-only first chunk, an empty delta, or an empty chunk that only carries finish_reason.
    """
    if body.find(b'"delta":{}', p, e) >= 0:
        return False
    empty = any(body.find(k, p, e) >= 0 for k in _EMPTY_TEXT)
    if not empty:
        return True
    if body.find(b'"role":', p, e) >= 0:
        return False
    return body.find(b'"finish_reason":"', p, e) < 0


MODE_UNKNOWN = 0
MODE_USAGE = 1  # usage on every chunk: count tokens by its deltas
MODE_SCAN = 2  # no per-chunk usage: a chunk with non-empty content is one token


class StreamState:
    """Parser state of one response stream (one per request, reused by nothing)."""

    __slots__ = (
        "buf",
        "cached_tokens",
        "chunk_ns",
        "chunk_tokens",
        "crlf",
        "detail",
        "done",
        "error",
        "first_ns",
        "last_ns",
        "mode",
        "prompt_tokens",
        "usage_tokens",
    )

    def __init__(self) -> None:
        self.buf = b""
        self.crlf: bool | None = None
        self.chunk_ns = array("q")
        self.chunk_tokens = array("i")
        self.first_ns = 0
        self.last_ns = 0
        self.usage_tokens = -1  # last completion_tokens seen in usage
        self.prompt_tokens = -1
        self.cached_tokens = -1  # prompt tokens the server's prefix cache held (-1: not said)
        self.mode = MODE_UNKNOWN
        self.done = False
        self.error: str | None = None
        self.detail = ""

    @property
    def counted_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def output_tokens(self) -> int:
        """Usage's count when the server gave one, else what the chunks carried."""
        return self.usage_tokens if self.usage_tokens >= 0 else self.counted_tokens

    def feed(self, body: bytes, t_ns: int) -> None:
        """Consume one piece of the de-chunked HTTP body, received at `t_ns`."""
        if self.buf:
            body = self.buf + body
            self.buf = b""
        if self.crlf is None:
            self.crlf = b"\r" in body
        if self.crlf:  # "\r\n" line ends are legal SSE; fold them so one scan serves both
            body = body.replace(b"\r\n", b"\n")
        end = len(body) - 2
        if end > 0 and body.find(b"\n\n") == end:  # one whole event: vLLM's usual chunk
            self._event(body, 0, end, t_ns)
            return
        start = 0
        while not self.done:
            end = body.find(b"\n\n", start)
            if end < 0:
                if start < len(body):
                    self.buf = body[start:]
                return
            self._event(body, start, end, t_ns)
            start = end + 2

    def _event(self, body: bytes, s: int, e: int, t_ns: int) -> None:
        if self.mode == MODE_USAGE and body[e - 1] == 125 and body.startswith(b"data: {", s):
            # Fast path, nearly every chunk of a vLLM-style stream: tokens from usage's delta.
            i = body.rfind(_COMPLETION, s, e)
            if i >= 0 and body.find(b'"error"', s, e) < 0:
                m = _INT.match(body, i + 20)
                if m is not None:
                    n = int(m.group(1))
                    k = n - (self.usage_tokens if self.usage_tokens > 0 else 0)
                    self.usage_tokens = n
                    if k > 0:
                        if not self.first_ns:
                            self.first_ns = t_ns
                        self.last_ns = t_ns
                        self.chunk_ns.append(t_ns)
                        self.chunk_tokens.append(k)
                    elif body.find(_CACHED, s, e) >= 0:  # final usage: once a request
                        self._prompt(body, s, e)
                    return
        if not body.startswith(b"data:", s):
            d = body.find(b"\ndata:", s, e)
            if d < 0:
                if body.startswith((b":", b"event:", b"id:", b"retry:"), s):
                    return  # SSE comment or a field with no data: nothing to time
                self._fail(records.MALFORMED, body[s : min(e, s + 80)])
                return
            s = d + 1
        p = s + 5
        if body[p] == 32:
            p += 1
        if body.startswith(b"[DONE]", p):
            self.done = True
            return
        last = e - 1
        while body[last] in b"\r\n ":
            last -= 1
        if body[p] != 123 or body[last] != 125:  # a JSON object: '{' ... '}'
            self._fail(records.MALFORMED, body[s : min(e, s + 80)])
            return
        if body.find(b'"error"', p, e) >= 0 and self._error_event(body[p : last + 1]):
            return
        i = body.rfind(_COMPLETION, p, e)
        if body.find(_EMPTY_CHOICES, p, e) >= 0:  # usage-only chunk: totals, no tokens
            if i >= 0:
                self.usage_tokens = int(_INT.match(body, i + 20).group(1))  # type: ignore[union-attr]
                self._prompt(body, p, e)
            return
        mode = self.mode
        if mode == MODE_UNKNOWN:
            mode = self.mode = MODE_USAGE if i >= 0 else MODE_SCAN
            if i >= 0:
                self._prompt(body, p, e)
        if mode == MODE_USAGE and i >= 0:
            n = int(_INT.match(body, i + 20).group(1))  # type: ignore[union-attr]
            k = n - (self.usage_tokens if self.usage_tokens > 0 else 0)
            self.usage_tokens = n
            if k <= 0:
                return
        else:
            if i >= 0:  # usage arrived late (last chunk only): it is the total
                self.usage_tokens = int(_INT.match(body, i + 20).group(1))  # type: ignore[union-attr]
            if not _scan_carries_token(body, p, e):
                return
            k = 1
        if not self.first_ns:
            self.first_ns = t_ns
        self.last_ns = t_ns
        self.chunk_ns.append(t_ns)
        self.chunk_tokens.append(k)

    def _prompt(self, body: bytes, p: int, e: int) -> None:
        j = body.find(_PROMPT, p, e)
        if j >= 0:
            self.prompt_tokens = int(_INT.match(body, j + 16).group(1))  # type: ignore[union-attr]
        j = body.find(_CACHED, p, e)
        if j >= 0:  # a null or odd value is no count, and no reason to fail the request
            m = _INT.match(body, j + 16, e)
            if m is not None:
                self.cached_tokens = int(m.group(1))

    def _error_event(self, payload: bytes) -> bool:
        try:
            obj = json.loads(payload)
        except ValueError:
            self._fail(records.MALFORMED, payload[:80])
            return True
        if not isinstance(obj, dict):
            return False
        err = obj.get("error")
        if err is None and obj.get("object") != "error":
            return False
        message = err.get("message", err) if isinstance(err, dict) else (err or obj.get("message"))
        self._fail(records.STREAM_ERROR, str(message).encode()[:160])
        return True

    def _fail(self, kind: str, detail: bytes) -> None:
        self.error = kind
        self.detail = detail.decode("utf-8", "replace").strip()
        self.done = True
