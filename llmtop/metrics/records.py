"""What one finished request ships from the load process to the collector.

A record is a plain tuple of ints and bytes so that pickling a batch costs microseconds: the
load loop only appends timestamps, and every derived figure (ITL samples, TPOT, percentiles)
is computed by the collector in the parent process.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

# Error kinds, stable strings used as keys in reports and JSON.
CONNECT = "connect"
TIMEOUT = "timeout"
STREAM_CUT = "stream_cut"
MALFORMED = "malformed_event"
STREAM_ERROR = "stream_error"
CANCELLED = "cancelled"
EVENT_TOO_LARGE = "event_too_large"  # an SSE event over the parser's cap (a flood)
BAD_USAGE = "bad_usage"  # usage counts that are not integers in range, or that went down


def http_error(status: int) -> str:
    return f"http_{status}"


class RequestRecord(NamedTuple):
    """The raw facts of one request, all times `time.perf_counter_ns()` (CLOCK_MONOTONIC)."""

    intended_ns: int  # when the open-loop schedule meant to send it
    slot_ns: int  # when it got a --max-concurrency slot (== intended_ns without a cap)
    send_ns: int  # just before the request was written (or the connection opened)
    first_ns: int  # arrival of the first chunk carrying generated tokens; 0 if none
    last_ns: int  # arrival of the last chunk carrying generated tokens; 0 if none
    end_ns: int  # when the response ended (or failed)
    prompt_tokens: int  # from usage; -1 when the server gave none
    output_tokens: int  # from usage; else the tokens counted from chunks
    chunk_ns: bytes  # array('q'): arrival time of every content chunk
    chunk_tokens: bytes  # array('i'): tokens carried by each content chunk
    error: str | None  # error kind (see constants above), None on success
    detail: str  # short error detail (status line, message), "" on success
    measured: bool  # False for warmup requests
    # Workloads (docs/workloads.md); ints with defaults so a record stays a cheap tuple.
    cached_tokens: int = -1  # usage.prompt_tokens_details.cached_tokens; -1 when not given
    turn: int = 0  # 1-based turn of a conversation; 0 for a request on its own
    reasoning_tokens: int = 0  # tokens of chunks carrying reasoning (reasoning models)
    reasoning_first_ns: int = 0  # arrival of the first reasoning chunk; 0 if none
    answer_first_ns: int = 0  # arrival of the first answer chunk (after any reasoning); 0 if none

    def stamps(self) -> array:
        a = array("q")
        a.frombytes(self.chunk_ns)
        return a

    def tokens_per_chunk(self) -> array:
        a = array("i")
        a.frombytes(self.chunk_tokens)
        return a
