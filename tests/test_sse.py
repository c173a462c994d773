"""The hot-path stream parser, on real vLLM wire bytes and on hand-made edge cases.

`tests/fixtures/wire/*.raw` are whole HTTP responses captured from vLLM 0.32.0 (CPU build);
see `tests/fixtures/wire/README.md` for how each was made.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import httptools
import pytest

from llmtop.backends.sse import (
    MAX_EVENT_BYTES,
    MAX_USAGE_TOKENS,
    MODE_SCAN,
    MODE_USAGE,
    StreamState,
)
from llmtop.metrics import records

WIRE = Path(__file__).parent / "fixtures" / "wire"


class _Sink:
    """httptools callbacks → StreamState, timestamping each feed with a counter."""

    def __init__(self) -> None:
        self.state = StreamState()
        self.t = 0
        self.status = 0
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.state.feed(body, self.t)

    def on_message_complete(self) -> None:
        self.complete = True


def parse_raw(raw: bytes, splits: list[int]) -> _Sink:
    sink = _Sink()
    parser = httptools.HttpResponseParser(sink)
    prev = 0
    for cut in [*splits, len(raw)]:
        sink.t += 1
        parser.feed_data(raw[prev:cut])
        prev = cut
    sink.status = parser.get_status_code()
    return sink


def random_splits(n: int, rng: random.Random, k: int) -> list[int]:
    return sorted(rng.sample(range(1, n), min(k, n - 1)))


@pytest.mark.parametrize(
    ("name", "tokens", "mode"),
    [
        ("completions_stream_continuous_usage", 16, MODE_USAGE),
        ("chat_stream_continuous_usage", 16, MODE_USAGE),
        ("completions_stream_text_prompt", 16, MODE_USAGE),
        ("completions_stream_final_usage", 16, MODE_SCAN),
    ],
)
def test_real_vllm_streams_any_split(name: str, tokens: int, mode: int) -> None:
    raw = (WIRE / f"{name}.raw").read_bytes()
    rng = random.Random(0)
    for trial in range(40):
        splits = [] if trial == 0 else random_splits(len(raw), rng, rng.randint(1, 60))
        sink = parse_raw(raw, splits)
        s = sink.state
        assert sink.status == 200 and sink.complete
        assert s.done and s.error is None
        assert s.output_tokens == tokens
        assert s.mode == mode
        assert sum(s.chunk_tokens) == tokens
        assert len(s.chunk_ns) == tokens
        assert list(s.chunk_ns) == sorted(s.chunk_ns)
        assert s.first_ns == s.chunk_ns[0] and s.last_ns == s.chunk_ns[-1]
        assert s.prompt_tokens > 0


def test_chat_role_chunk_is_not_a_token() -> None:
    """The first chat chunk (role only, content "") must not start TTFT."""
    raw = (WIRE / "chat_stream_continuous_usage.raw").read_bytes()
    body_start = raw.index(b"\r\n\r\n") + 4
    first_event_end = raw.index(b"\n\n", body_start) + 2
    sink = parse_raw(raw, [first_event_end + 8])  # role chunk alone in the first feed
    assert sink.state.first_ns == 2


def test_no_usage_counts_one_token_per_content_chunk() -> None:
    raw = (WIRE / "completions_stream_no_usage.raw").read_bytes()
    s = parse_raw(raw, []).state
    assert s.error is None and s.done
    assert s.usage_tokens == -1
    assert s.output_tokens == len(s.chunk_ns) > 0


def test_error_event_after_200_is_a_stream_error() -> None:
    sse = (WIRE / "error_in_200_stream_token_id_out_of_vocab.sse").read_bytes()
    s = StreamState()
    s.feed(sse, 1)
    assert s.error == records.STREAM_ERROR
    assert "out of vocabulary" in s.detail
    assert not s.chunk_ns


def test_several_tokens_in_one_chunk_from_usage_deltas() -> None:
    events = [
        b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n',
        b'data: {"choices":[{"text":"bcd"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n',
        b'data: {"choices":[{"text":""}],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n',
        b"data: [DONE]\n\n",
    ]
    s = StreamState()
    for t, e in enumerate(events, start=10):
        s.feed(e, t)
    assert list(s.chunk_ns) == [10, 11]
    assert list(s.chunk_tokens) == [1, 3]
    assert s.output_tokens == 4 and s.prompt_tokens == 3 and s.done


def test_usage_on_last_chunk_only_is_a_total_not_a_burst() -> None:
    """llama.cpp puts usage on the last chunk only: it must not count as k tokens at once."""
    events = [
        b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"y"}}]}\n\n',
        b'data: {"choices":[{"delta":{},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    s = StreamState()
    for t, e in enumerate(events):
        s.feed(e, t)
    assert list(s.chunk_tokens) == [1, 1]
    assert s.output_tokens == 2 and s.done


def test_crlf_framing_and_comments() -> None:
    s = StreamState()
    s.feed(b': keep-alive\r\n\r\ndata: {"choices":[{"text":"a"}]}\r', 1)
    s.feed(b"\n\r\ndata: [DONE]\r\n\r\n", 2)
    assert list(s.chunk_ns) == [2] and s.done and s.error is None


def test_event_field_before_data_line() -> None:
    s = StreamState()
    s.feed(b'event: message\ndata: {"choices":[{"text":"a"}]}\n\n', 4)
    assert list(s.chunk_ns) == [4]


@pytest.mark.parametrize(
    "bad",
    [b"data: {not json\n\n", b"data: hello\n\n", b"garbage line\n\n", b'data: {"a":1\n\n'],
)
def test_malformed_events(bad: bytes) -> None:
    s = StreamState()
    s.feed(bad, 1)
    assert s.error == records.MALFORMED and s.done


def test_openai_error_object_in_stream() -> None:
    s = StreamState()
    s.feed(b'data: {"object":"error","message":"boom","code":500}\n\n', 1)
    assert s.error == records.STREAM_ERROR and s.detail == "boom"


def test_quoted_error_inside_generated_text_is_not_an_error() -> None:
    s = StreamState()
    s.feed(b'data: {"choices":[{"text":"say \\"error\\" now"}]}\n\n', 1)
    assert s.error is None and list(s.chunk_ns) == [1]


# -- line ends, caps and usage values from servers we do not control --------------------------

_EVENTS = [
    b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
    b'data: {"choices":[{"text":"b"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b"data: [DONE]",
]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_line_end_any_split(eol: bytes) -> None:
    wire = b"".join(e + eol + eol for e in _EVENTS)
    for cut in range(1, len(wire)):
        s = StreamState()
        s.feed(wire[:cut], 1)
        s.feed(wire[cut:], 2)
        assert s.error is None and s.done, (cut, s.detail)
        assert sum(s.chunk_tokens) == 2 and s.output_tokens == 2


def test_line_ends_mixed_within_and_across_events() -> None:
    """CRLF first, LF later, a CR alone: each event still ends at its blank line only."""
    wire = _EVENTS[0] + b"\r\n\r\n" + _EVENTS[1] + b"\n\r\n" + _EVENTS[2] + b"\r\r" + _EVENTS[3]
    wire += b"\n\n"
    rng = random.Random(1)
    for _ in range(200):
        s = StreamState()
        for t, piece in enumerate(_pieces(wire, rng)):
            s.feed(piece, t)
        assert s.error is None and s.done and list(s.chunk_tokens) == [1, 1]


def test_a_crlf_pair_split_between_pieces_is_one_line_end() -> None:
    """ "\\r" ending one piece and "\\n" opening the next are one line end, not a blank line."""
    s = StreamState()
    s.feed(b'data: {"choices":[{"text":"a"}],"usage":{"completion_tokens":1}}\r', 1)
    s.feed(b"\nid: 7\r", 2)
    assert not s.chunk_ns  # no event has ended yet
    s.feed(b"\n\r\n", 3)
    assert list(s.chunk_ns) == [3] and s.error is None


def test_blank_lines_between_events_are_nothing() -> None:
    s = StreamState()
    s.feed(b"\n\n\n\n" + _EVENTS[0] + b"\n\n\n\n" + _EVENTS[1] + b"\n\n\n", 1)
    assert s.error is None and list(s.chunk_tokens) == [1, 1]


def test_data_split_over_several_lines_is_joined() -> None:
    s = StreamState()
    s.feed(b'data: {"choices":[{"text":"a"}],\ndata: "usage":{"completion_tokens":1}}\n\n', 5)
    assert s.error is None and list(s.chunk_ns) == [5]


def test_an_event_without_end_is_capped_and_counted() -> None:
    """A stream that never sends a blank line fails at the cap; the buffer never passes it."""
    s = StreamState()
    s.feed(_EVENTS[0] + b"\n\n", 1)
    s.feed(b"data: " + b"x" * 1000 + b"\n", 2)
    piece = (b"y" * 4095 + b"\n") * 16  # 64 KiB of lines, never a blank one
    fed = 0
    while not s.done:
        s.feed(piece, 3)
        fed += len(piece)
        assert s.buf is None or len(s.buf) <= MAX_EVENT_BYTES + len(piece)
    assert s.error == records.EVENT_TOO_LARGE
    assert MAX_EVENT_BYTES - len(piece) <= fed <= MAX_EVENT_BYTES + len(piece)
    assert s.buf is None and list(s.chunk_tokens) == [1]  # what came before is kept


def test_one_huge_complete_event_is_too_large_too() -> None:
    s = StreamState()
    s.feed(b"data: {" + b"x" * MAX_EVENT_BYTES + b"}\n\n", 1)
    assert s.error == records.EVENT_TOO_LARGE


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"-5", "'-5'"),
        (b"null", "'null'"),
        (b"2.5", "'2.5'"),
        (b"1e18", "'1e18'"),
        (b'"7"', "'\"7\"'"),
        (b"1000000000000000000", "'1000000000000000000'"),
        (b"%d" % (MAX_USAGE_TOKENS + 1), str(MAX_USAGE_TOKENS + 1)),
    ],
)
@pytest.mark.parametrize("where", ["first", "later", "final"])
def test_absurd_usage_is_a_counted_error_not_a_figure(value: bytes, why: str, where: str) -> None:
    good = b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":%d}}'
    bad = b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":%s}}'
    final = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":%s}}'
    events = {
        "first": [bad % value],
        "later": [good % 1, good % 2, bad % value],
        "final": [good % 1, good % 2, final % value],
    }[where]
    s = StreamState()
    for t, e in enumerate(events):
        s.feed(e + b"\n\n", t)
    assert s.error == records.BAD_USAGE and s.done
    assert why in s.detail and "completion_tokens" in s.detail
    assert all(0 < k <= 2 for k in s.chunk_tokens)  # nothing absurd was recorded


def test_usage_that_goes_down_is_a_counted_error() -> None:
    ev = b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":3,"completion_tokens":%d}}\n\n'
    s = StreamState()
    for t, n in enumerate([1, 2, 3, 1, 2, 3]):
        s.feed(ev % n, t)
    assert s.error == records.BAD_USAGE and "from 3 to 1" in s.detail
    assert list(s.chunk_tokens) == [1, 1, 1]


def test_absurd_prompt_tokens_are_a_counted_error() -> None:
    s = StreamState()
    s.feed(b'data: {"choices":[{"text":"a"}],"usage":{"prompt_tokens":-1,"completion_tokens":1}}'
           b"\n\n", 1)  # fmt: skip
    assert s.error == records.BAD_USAGE and "prompt_tokens" in s.detail


def test_invalid_utf8_in_events_never_raises() -> None:
    s = StreamState()
    s.feed(b'data: {"choices":[{"text":"\xff\xfe"}],"usage":{"completion_tokens":1}}\n\n', 1)
    s.feed(b'data: {"error": "\xff\xfe bad"}\n\n', 2)
    assert list(s.chunk_ns) == [1] and s.error == records.MALFORMED


def _pieces(wire: bytes, rng: random.Random) -> list[bytes]:
    cuts = random_splits(len(wire), rng, rng.randint(0, 12)) if len(wire) > 1 else []
    bounds = [0, *cuts, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]
