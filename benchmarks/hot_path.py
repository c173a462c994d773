"""CPU per token of llmtop's receive path, piece by piece, without a server or a run.

Why: `accuracy.py` gives the whole load process's CPU per token, which on a shared machine
moves by ±20 % from run to run (other people's jobs, the server's own lateness changing how
many tokens one read carries). This replays the same bytes through each layer of the hot path
in one process and reports the best of several repeats of CPU time (process_time, not wall
time), so a change to one layer shows up as a difference of tens of nanoseconds:

- `sse`: `StreamState.feed` on one whole vLLM-shaped event per call (the inline fast path);
- `http`: `StreamConnection.received` → httptools → the body sink → `feed`, one HTTP chunk
  per call, including each request's own costs (Exchange, its record) spread over its tokens;
- `read`: `RawLink._readable` on a loopback TCP socket with SO_TIMESTAMPNS: `recvmsg`, the
  kernel stamp's conversion, the hand-off (the syscall included; the protocol does nothing).

    python benchmarks/hot_path.py [--tokens 200] [--repeats 7] [--json out.json]

Run it pinned (`taskset -c 1`) and compare two checkouts by running it from each.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmtop.backends import link
from llmtop.backends.http import Exchange, StreamConnection
from llmtop.backends.sse import StreamState

# What vLLM's /v1/completions sends per token with continuous usage (the scripted server's shape)
EVENT = (
    b'data: {"id":"cmpl-scripted-32-200","object":"text_completion","created":1764470000,'
    b'"model":"scripted","choices":[{"index":0,"text":" tok","logprobs":null,'
    b'"finish_reason":null}],"usage":{"prompt_tokens":32,"total_tokens":%d,'
    b'"completion_tokens":%d}}\n\n'
)
HEAD = (
    b"HTTP/1.1 200 OK\r\nserver: scripted\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _events(tokens: int) -> list[bytes]:
    return [EVENT % (32 + n, n) for n in range(1, tokens + 1)]


def bench_sse(tokens: int, repeats: int, streams: int = 200) -> float:
    """ns per event through `StreamState.feed`, a fresh state per stream."""
    events = _events(tokens)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time_ns()
        for _ in range(streams):
            feed = StreamState().feed
            for t, ev in enumerate(events):
                feed(ev, t)
        best = min(best, (time.process_time_ns() - t0) / (streams * tokens))
    return best


class _Pool:
    """What a StreamConnection asks of its pool, and nothing more."""

    def __init__(self) -> None:
        self.rx_clock = link.ReceiveClock()
        self.tokens = 0

    def finish(self, ex: Exchange, rec: Any) -> None:
        self.tokens += rec.output_tokens

    def release(self, conn: StreamConnection) -> None:
        pass

    def forget(self, conn: StreamConnection) -> None:
        pass


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def bench_http(tokens: int, repeats: int, requests: int = 100) -> float:
    """ns per token from `received` down, one HTTP chunk per read, per-request costs in."""
    events = _events(tokens)
    reads = [HEAD + _frame(events[0])] + [_frame(e) for e in events[1:]]
    tail = b'data: {"choices":[],"usage":{"prompt_tokens":32,"completion_tokens":%d}}\n\n'
    reads[-1] += _frame(tail % tokens) + _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    pool = _Pool()
    conn = StreamConnection(pool)  # type: ignore[arg-type]
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time_ns()
        for _ in range(requests):
            conn.send(Exchange(0, 0, True), b"POST / HTTP/1.1\r\n\r\n")
            received = conn.received
            for t, data in enumerate(reads):
                received(data, t)
        best = min(best, (time.process_time_ns() - t0) / (requests * tokens))
    assert pool.tokens == repeats * requests * tokens, "the chain lost tokens"
    return best


class _Sink:
    reads = 0

    def connection_made(self, transport: Any) -> None:
        pass

    def received(self, data: bytes, t_ns: int) -> None:
        _Sink.reads += 1

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def bench_read(repeats: int, reads: int = 20000) -> float:
    """ns per `RawLink._readable` (syscall included) on loopback TCP with kernel stamps."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, link.SO_TIMESTAMPNS, 1)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    client.setblocking(False)
    loop = asyncio.new_event_loop()
    args: list[Any] = [loop, client, _Sink(), link.ReceiveClock()]
    if "buf" in inspect.signature(link.RawLink).parameters:  # before 4dc5db8: a shared buffer
        args.append(bytearray(link.READ_SIZE))
    raw = link.RawLink(*args)
    data = _frame(EVENT % (33, 1))
    best = float("inf")
    try:
        for _ in range(repeats):
            spent = 0
            for _ in range(reads):
                server.send(data)
                time.sleep(0)  # the bytes are in the client's queue before the read
                t0 = time.process_time_ns()
                raw._readable()
                spent += time.process_time_ns() - t0
            best = min(best, spent / reads)
    finally:
        raw.abort()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        server.close()
        listener.close()
    # the clock reads around each call cost something too: measure and take them out
    t0 = time.process_time_ns()
    for _ in range(reads):
        time.process_time_ns()
    return best - (time.process_time_ns() - t0) / reads


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    out = {
        "sse_ns_per_event": round(bench_sse(a.tokens, a.repeats)),
        "http_ns_per_token": round(bench_http(a.tokens, a.repeats)),
        "read_ns_per_read": round(bench_read(max(3, a.repeats // 2))),
    }
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
