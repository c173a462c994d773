"""Property-based fuzz of the SSE stream parser (hypothesis): whatever a server sends.

Properties: it never raises; the tokens it counts are exactly the ones sent, or the stream
ends as one counted error kind; its buffer stays under the cap; its time is linear in the
input size (each byte scanned once, whatever the pieces).
"""

from __future__ import annotations

import itertools
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtop.backends.sse import MAX_EVENT_BYTES, StreamState
from llmtop.metrics import records

FUZZ = settings(
    max_examples=300,
    deadline=None,  # a shared CI machine; time is checked by its own test below
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KINDS = {
    records.MALFORMED,
    records.STREAM_ERROR,
    records.BAD_USAGE,
    records.EVENT_TOO_LARGE,
}
EOLS = st.sampled_from([b"\n", b"\r\n", b"\r"])


def _feed(s: StreamState, wire: bytes, cuts: list[int]) -> int:
    """Feed `wire` cut at `cuts`; return the largest buffer seen between pieces."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(wire)}), len(wire)]
    most = 0
    for t, (a, b) in enumerate(itertools.pairwise(bounds)):
        s.feed(wire[a:b], t)
        if s.buf is not None:
            most = max(most, len(s.buf))
    return most


@st.composite
def token_streams(draw: st.DrawFn) -> tuple[bytes, list[int], list[int]]:
    """A vLLM-style stream with per-chunk usage, any line ends, comments and blank lines."""
    ks = draw(st.lists(st.integers(1, 5), min_size=0, max_size=30))
    chat = draw(st.booleans())
    parts: list[bytes] = []

    def line_end() -> bytes:
        return draw(EOLS)

    def blank() -> bytes:
        """A line end and an empty line: CR then LF would be one CRLF, so not that."""
        first = draw(EOLS)
        if first == b"\r":
            return first + draw(st.sampled_from([b"\r", b"\r\n"]))
        return first + draw(EOLS)

    if chat:  # the role-only first chunk: usage 0, no token
        parts.append(
            b'data: {"choices":[{"delta":{"role":"assistant","content":""}}],'
            b'"usage":{"prompt_tokens":4,"completion_tokens":0}}' + blank()
        )
    n = 0
    for k in ks:
        n += k
        if draw(st.booleans()):
            parts.append(b": keep-alive" + blank())
        if draw(st.integers(0, 4)) == 0:
            parts.append(line_end())  # a stray blank line
        text = draw(st.text(max_size=6)).encode("utf-8")
        text = text.replace(b"\\", b"").replace(b'"', b"").replace(b"\r", b"").replace(b"\n", b"")
        body = b'{"choices":[{"text":"%s"}],"usage":{"prompt_tokens":4,"completion_tokens":%d}}'
        parts.append(b"data: " + body % (text, n) + blank())
    parts.append(b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":%d}}' % n)
    parts.append(blank() + b"data: [DONE]" + blank())
    wire = b"".join(parts)
    cuts = draw(st.lists(st.integers(0, max(len(wire), 1)), max_size=40))
    return wire, cuts, ks


@FUZZ
@given(token_streams())
def test_tokens_are_exact_whatever_the_line_ends_and_pieces(case) -> None:
    wire, cuts, ks = case
    s = StreamState()
    _feed(s, wire, cuts)
    assert s.error is None, s.detail
    assert s.done
    assert sum(s.chunk_tokens) == sum(ks) == s.output_tokens
    # A piece may hold several events (they then share its time): the count per chunk is
    # the usage delta of each event, so the multiset of k's is the one sent.
    assert sorted(s.chunk_tokens) == sorted(ks)
    assert len(s.chunk_ns) == len(ks)


BAD_VALUES = st.one_of(
    st.integers(max_value=-1).map(lambda v: b"%d" % v),
    st.integers(min_value=1 << 24 + 1, max_value=10**30).map(lambda v: b"%d" % v),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: repr(v).encode()),
    st.sampled_from([b"null", b"true", b'"12"', b"[]", b"{}", b"1e18", b"NaN", b"", b"-0"]),
)


@FUZZ
@given(
    st.lists(st.integers(1, 3), min_size=0, max_size=10),
    BAD_VALUES,
    st.booleans(),
    st.lists(st.integers(0, 4000), max_size=20),
)
def test_absurd_usage_ends_the_stream_as_bad_usage(ks, bad, final, cuts) -> None:
    ev = b'data: {"choices":[{"text":"x"}],"usage":{"prompt_tokens":4,"completion_tokens":%s}}\n\n'
    n = 0
    wire = b""
    for k in ks:
        n += k
        wire += ev % (b"%d" % n)
    if final:
        wire += b'data: {"choices":[],"usage":{"completion_tokens":%s}}\n\n' % bad
    else:
        wire += ev % bad
    wire += b"data: [DONE]\n\n"
    s = StreamState()
    _feed(s, wire, cuts)
    if bad in (b"-0",) or (bad.isdigit() and int(bad) <= 1 << 24):
        return  # a value that happens to be legal; covered by the exact-token test
    assert s.error == records.BAD_USAGE, (bad, s.error, s.detail)
    assert list(s.chunk_tokens) == ks  # what came before the bad value is intact


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=30))
def test_arbitrary_bytes_never_raise(wire: bytes, cuts: list[int]) -> None:
    s = StreamState()
    most = _feed(s, wire, cuts)
    assert s.error is None or s.error in KINDS
    assert most <= MAX_EVENT_BYTES
    assert all(k > 0 for k in s.chunk_tokens)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    b"data: ",
                    b"data:",
                    b"data: [DONE]",
                    b"\n",
                    b"\r",
                    b"\r\n",
                    b"{",
                    b"}",
                    b'"error"',
                    b'"completion_tokens":',
                    b'"prompt_tokens":',
                    b'"choices":[]',
                    b"event: x",
                    b":",
                    b"\xff\xfe",
                ]
            ),
        ),
        max_size=60,
    ),
    st.lists(st.integers(0, 4000), max_size=30),
)
def test_sse_shaped_garbage_never_raises(bits: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(bits)
    s = StreamState()
    most = _feed(s, wire, cuts)
    assert s.error is None or s.error in KINDS
    assert most <= MAX_EVENT_BYTES
    assert all(0 < k <= 1 << 24 for k in s.chunk_tokens)


def _cpu_to_fill(total: int, piece: int) -> float:
    """CPU seconds to feed `total` bytes with no event boundary, `piece` bytes at a time."""
    chunk = (b"z" * (piece - 1) + b"\n")[:piece]
    best = float("inf")
    for _ in range(3):
        s = StreamState()
        t = time.process_time()
        for _ in range(total // piece):
            s.feed(chunk, 1)
        best = min(best, time.process_time() - t)
        assert s.error is None and s.buf is not None and len(s.buf) == total
    return best


def test_time_is_linear_in_the_input_size() -> None:
    """Four times the bytes in small pieces: about four times the time, not sixteen.

    (Rescanning or re-copying the whole buffer on every piece, as the parser once did, is
    quadratic: 1 MiB in 64-byte pieces then costs seconds.)
    """
    small = _cpu_to_fill(MAX_EVENT_BYTES // 4, 64)
    large = _cpu_to_fill(MAX_EVENT_BYTES, 64)
    assert large < 8 * small + 0.005, (small, large)
    assert large < 0.5, large
