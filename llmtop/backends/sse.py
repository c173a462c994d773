"""The hot-path parser for OpenAI-style SSE token streams.

Per chunk it does a byte scan and appends one timestamp; JSON is parsed only for an error
event. Tokens per chunk come from the stream's own `usage` when the server sends it on every
chunk (vLLM's `continuous_usage_stats`): a chunk that raised `completion_tokens` by k carries k
tokens, and a chunk that did not raise it (chat's role-only first chunk, the final usage chunk)
carries none. Servers that put usage on the last chunk only (llama.cpp) fall back to "a chunk
from the engine carries one token (see `_scan_carries_token`)", and the final usage gives the
total.

A server we do not control decides what arrives, so the parser is bounded:
- an event longer than `MAX_EVENT_BYTES` ends the stream as `event_too_large` (a stream that
  never sends a blank line cannot grow memory or stall the load loop), and each byte is
  scanned for an event boundary once (the search resumes where the last one stopped);
- line ends may be CRLF, LF or CR, mixed anywhere, split anywhere (SSE allows all three);
- `usage` counts that are not plain integers in [0, `MAX_USAGE_TOKENS`], or that go down,
  end the request as `bad_usage`. Why an error rather than a fallback to counting chunks: the
  usage deltas are what say how many tokens each chunk carried; once a server contradicts
  itself no figure of that request (ITL samples, TPOT, output tokens) can be trusted, and a
  counted error with the offending value tells the operator so instead of quietly skewing
  ITL and throughput.
"""

from __future__ import annotations

import json
import re
from array import array

from llmtop.metrics import records

MAX_EVENT_BYTES = 1 << 20  # 1 MiB: a vLLM chunk is ~300 bytes; a logprobs-heavy one a few KB
MAX_USAGE_TOKENS = 1 << 24  # 16.7M: beyond any served context window, far below int32

# A usage count: a plain JSON integer (no sign, fraction, exponent or null), then , or }.
_INT = re.compile(rb"\s*(\d{1,9})\s*[,}]")
_COMPLETION = b'"completion_tokens":'
# The fast path's usage count: compact JSON, digits only; anything else takes the slow path.
_COMPLETION_FAST = re.compile(rb'"completion_tokens":(\d{1,9})[,}]')
_PROMPT = b'"prompt_tokens":'
_CACHED = b'"cached_tokens":'  # usage.prompt_tokens_details.cached_tokens (prefix cache)
_EMPTY_CHOICES = b'"choices":[]'
_EMPTY_TEXT = (b'"text":""', b'"content":""', b'"content":null')
_FIELDS = (b":", b"event:", b"id:", b"retry:")


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
        "detail",
        "done",
        "error",
        "fast",
        "k_append",
        "mode",
        "ns_append",
        "prompt_tokens",
        "skip_lf",
        "usage_tokens",
    )

    # Whether `feed` may take a whole one-event piece itself; a subclass that sees each event
    # through `_event` (RichStream) turns it off by overriding `_event`.
    _INLINE = True

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        cls._INLINE = cls._event is StreamState._event

    def __init__(self) -> None:
        self.buf: bytearray | None = None  # the unfinished event, LF line ends only
        self.skip_lf = False  # the last piece ended in CR: an LF opening the next is its pair
        self.chunk_ns = array("q")
        self.chunk_tokens = array("i")
        self.ns_append = self.chunk_ns.append  # bound once: called on every token
        self.k_append = self.chunk_tokens.append
        self.fast = False  # usage on every chunk seen: `feed`'s inline path may run
        self.usage_tokens = -1  # last completion_tokens seen in usage
        self.prompt_tokens = -1
        self.cached_tokens = -1  # prompt tokens the server's prefix cache held (-1: not said)
        self.mode = MODE_UNKNOWN
        self.done = False
        self.error: str | None = None
        self.detail = ""

    @property
    def first_ns(self) -> int:
        """Arrival of the first chunk that carried tokens (0: none yet)."""
        return self.chunk_ns[0] if self.chunk_ns else 0

    @property
    def last_ns(self) -> int:
        """Arrival of the last chunk that carried tokens (0: none yet)."""
        return self.chunk_ns[-1] if self.chunk_ns else 0

    @property
    def counted_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def output_tokens(self) -> int:
        """Usage's count when the server gave one, else what the chunks carried."""
        return self.usage_tokens if self.usage_tokens >= 0 else self.counted_tokens

    def feed(self, body: bytes, t_ns: int) -> None:
        """Consume one piece of the de-chunked HTTP body, received at `t_ns`."""
        if (
            self.fast
            and body.endswith(b"}\n\n")
            and body.find(10) == len(body) - 2  # one line, one event
            and 13 not in body  # no CR (a line end too)
            and self.buf is None
            and not self.skip_lf
            and body.startswith(b"data: {")
        ):
            # The hot path: nearly every read of a vLLM-style stream is one whole event on
            # one line, with usage; the tokens it carried are usage's delta. What does not
            # fit exactly (a count that fell, is huge or not plain digits; several events or
            # lines) goes the general way below, which checks it all. An error event carries
            # no rising usage count (vLLM: `{"error": {...}}`), so it never gets past `m`.
            i = body.rfind(_COMPLETION)
            if i > 0:
                m = _COMPLETION_FAST.match(body, i)
                if m is not None:
                    n = int(m[1])
                    k = n - self.usage_tokens
                    if k > 0 and n <= MAX_USAGE_TOKENS:
                        self.usage_tokens = n
                        self.ns_append(t_ns)
                        self.k_append(k)
                        return
        if self.done:
            return
        if self.skip_lf:
            self.skip_lf = False
            if body[:1] == b"\n":
                body = body[1:]
        if b"\r" in body:  # fold CRLF and CR line ends to LF so one scan serves all three
            self.skip_lf = body[-1:] == b"\r"
            body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self.buf
        if buf is not None:
            scan = len(buf) - 1  # a boundary may straddle the pieces: "...\n" + "\n..."
            buf += body
            end = buf.find(b"\n\n", scan)
            if end < 0:
                if len(buf) > MAX_EVENT_BYTES:
                    self._too_large()
                return
            self.buf = None
            body = bytes(buf)  # one copy per finished event
        else:
            end = len(body) - 2
            if end > 0 and body.find(b"\n\n") == end:  # one whole event: vLLM's usual chunk
                if end <= MAX_EVENT_BYTES:
                    self._event(body, 0, end, t_ns)
                else:
                    self._too_large()
                return
            end = body.find(b"\n\n")
        start = 0
        while end >= 0:
            if end - start > MAX_EVENT_BYTES:
                self._too_large()
                return
            self._event(body, start, end, t_ns)
            if self.done:
                return
            start = end + 2
            end = body.find(b"\n\n", start)
        if start < len(body):
            if len(body) - start > MAX_EVENT_BYTES:
                self._too_large()
                return
            self.buf = bytearray(body[start:]) if start else bytearray(body)

    def _event(self, body: bytes, s: int, e: int, t_ns: int) -> None:
        """One event: body[s:e], LF line ends, without its blank line."""
        if self.mode == MODE_USAGE and body[e - 1] == 125 and body.startswith(b"data: {", s, e):
            # Fast path, nearly every chunk of a vLLM-style stream: tokens from usage's delta.
            i = body.rfind(_COMPLETION, s, e)
            if i >= 0 and body.find(b'"error"', s, e) < 0:
                m = _INT.match(body, i + 20)
                if m is not None:
                    n = int(m.group(1))
                    prev = self.usage_tokens
                    k = n - (prev if prev > 0 else 0)
                    if k > 0 and n <= MAX_USAGE_TOKENS:
                        self.usage_tokens = n
                        self.ns_append(t_ns)
                        self.k_append(k)
                        return
                    if k == 0 and n >= prev:
                        self.usage_tokens = n
                        if body.find(_CACHED, s, e) >= 0:  # final usage: once a request
                            self._prompt(body, s, e)
                        return
                    # anything else (a count that fell or is huge): the checks below say why
        while s < e and body[s] == 10:  # blank lines before the event: nothing
            s += 1
        if s >= e:
            return
        if body.startswith(b"data:", s, e):
            d = s
        else:
            d = body.find(b"\ndata:", s, e) + 1
            if not d:
                if body.startswith(_FIELDS, s, e):
                    return  # SSE comment or fields with no data: nothing to time
                self._fail(records.MALFORMED, body[s : min(e, s + 80)])
                return
        payload, p, q = self._data(body, d, e)
        if payload.startswith(b"[DONE]", p, q):
            self.done = True
            self.fast = False
            return
        if q <= p or payload[p] != 123 or payload[q - 1] != 125:  # a JSON object: '{' ... '}'
            self._fail(records.MALFORMED, body[d : min(e, d + 80)])
            return
        if payload.find(b'"error"', p, q) >= 0 and self._error_event(payload[p:q]):
            return
        self._tokens(payload, p, q, t_ns)

    @staticmethod
    def _data(body: bytes, d: int, e: int) -> tuple[bytes, int, int]:
        """The data of an event whose first data line starts at `d`: (bytes, start, end).

        One data line (every engine we know): a slice of `body`, no copy. Several: joined
        with LF, as SSE says.
        """
        p = d + 5
        if p < e and body[p] == 32:
            p += 1
        q = body.find(b"\n", p, e)
        if q < 0:
            q = e
        nxt = body.find(b"\ndata:", q, e)
        if nxt < 0:
            while q > p and body[q - 1] == 32:  # trailing spaces
                q -= 1
            return body, p, q
        parts = [body[p:q]]
        while nxt >= 0:
            a = nxt + 6
            if a < e and body[a] == 32:
                a += 1
            b = body.find(b"\n", a, e)
            if b < 0:
                b = e
            parts.append(body[a:b])
            nxt = body.find(b"\ndata:", b, e)
        joined = b"\n".join(parts).rstrip(b" ")
        return joined, 0, len(joined)

    def _tokens(self, body: bytes, p: int, e: int, t_ns: int) -> None:
        """A JSON chunk that is not an error: how many tokens it carried, if any."""
        i = body.rfind(_COMPLETION, p, e)
        if i >= 0:
            n = self._count(body, i + 20, e, "completion_tokens")
            if n < 0:
                return
            prev = self.usage_tokens
            if n < prev:
                self._fail(
                    records.BAD_USAGE,
                    f"usage.completion_tokens went down from {prev} to {n}".encode(),
                )
                return
        else:
            n = -1
        if body.find(_EMPTY_CHOICES, p, e) >= 0:  # usage-only chunk: totals, no tokens
            if n >= 0:
                self.usage_tokens = n
                self._prompt(body, p, e)
            return
        mode = self.mode
        if mode == MODE_UNKNOWN:
            mode = self.mode = MODE_USAGE if n >= 0 else MODE_SCAN
            self.fast = mode == MODE_USAGE and self._INLINE
            if n >= 0:
                self._prompt(body, p, e)
        if mode == MODE_USAGE and n >= 0:
            k = n - (self.usage_tokens if self.usage_tokens > 0 else 0)
            self.usage_tokens = n
            if k <= 0:
                return
        else:
            if n >= 0:  # usage arrived late (last chunk only): it is the total
                self.usage_tokens = n
            if not _scan_carries_token(body, p, e):
                return
            k = 1
        self.ns_append(t_ns)
        self.k_append(k)

    def _count(self, body: bytes, v: int, e: int, name: str) -> int:
        """A usage count at body[v:], or -1 after failing the stream as `bad_usage`."""
        m = _INT.match(body, v, e)
        if m is not None:
            n = int(m.group(1))
            if n <= MAX_USAGE_TOKENS:
                return n
        raw = body[v:e].lstrip()
        cut = min((j for j in (raw.find(b","), raw.find(b"}")) if j >= 0), default=24)
        shown = raw[: min(cut, 24)].decode("utf-8", "replace")
        self._fail(
            records.BAD_USAGE,
            f"usage.{name} is {shown!r}, not an integer in [0, {MAX_USAGE_TOKENS}]".encode(),
        )
        return -1

    def _prompt(self, body: bytes, p: int, e: int) -> None:
        j = body.find(_PROMPT, p, e)
        if j >= 0:
            n = self._count(body, j + 16, e, "prompt_tokens")
            if n >= 0:
                self.prompt_tokens = n
        j = body.find(_CACHED, p, e)
        if j >= 0:  # a null or odd value is no count, and no reason to fail the request
            m = _INT.match(body, j + 16, e)
            if m is not None:
                self.cached_tokens = int(m.group(1))

    def _error_event(self, payload: bytes) -> bool:
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
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

    def _too_large(self) -> None:
        self.buf = None  # free it now: the stream is over
        self._fail(
            records.EVENT_TOO_LARGE,
            f"an SSE event passed {MAX_EVENT_BYTES} bytes without ending".encode(),
        )

    def _fail(self, kind: str, detail: bytes) -> None:
        self.error = kind
        self.detail = detail.decode("utf-8", "replace").strip()
        self.done = True
        self.fast = False
