"""The simulated engine's HTTP server: OpenAI-compatible API in real time.

A lean HTTP/1.1 server on asyncio + httptools rather than aiohttp: one iteration timer
drives every stream, and each step writes one pre-assembled SSE chunk per stream straight
to its transport, with no coroutine or task per chunk (see docs/sim.md for the measurement
that led here). The server measures its own emission lateness (write time minus the step
end the performance model scheduled) and reports it at `/sim/stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

from llmtop import __version__ as LLMTOP_VERSION
from llmtop.sim.model import SimSettings
from llmtop.sim.scheduler import FINISHED, Scheduler, SimRequest, Step
from llmtop.sim.tokens import (
    WORDS,
    chat_token_ids,
    count_chat_tokens,
    count_text_tokens,
    text_token_ids,
)

SIM_HEADER = b"x-llmtop-sim: 1\r\n"
EOS_MEAN_TOKENS = 256  # mean length of a seeded natural ending when ignore_eos is off
_LAT_BUCKET_S = 10e-6
_LAT_BUCKETS = 100_000  # 10 µs buckets up to 1 s
_ITER_STATS_MAX = 1000
_WAKE_EARLY_S = 0.0012

_WORD_BYTES = [w.encode() for w in WORDS]
_NWORDS = len(WORDS)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# trtllm-serve's request models forbid unknown fields (pydantic extra="forbid").
_TRT_COMMON = {
    "model",
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "user",
    "lora_request",
    "use_beam_search",
    "top_k",
    "top_p_min",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "early_stopping",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "add_special_tokens",
    "response_format",
    "disaggregated_params",
    "priority",
    "detokenize",
    "return_context_logits",
    "prompt_ignore_length",
    "thinking_token_budget",
    "conversation_params",
}
_TRT_COMPLETION_FIELDS = _TRT_COMMON | {"prompt", "suffix"}
_TRT_CHAT_FIELDS = _TRT_COMMON | {
    "messages",
    "top_logprobs",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "add_generation_prompt",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "reasoning_effort",
    "mm_processor_kwargs",
    "cache_salt",
}
_STREAM_OPTION_FIELDS = {"include_usage", "continuous_usage_stats"}


class ApiError(Exception):
    """An error answered as the engines do: {"object": "error", "message", "type", "code"}."""

    def __init__(self, status: int, message: str, etype: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype


def _error_body(e: ApiError) -> dict[str, Any]:
    return {
        "object": "error",
        "message": e.message,
        "type": e.etype,
        "param": None,
        "code": e.status,
    }


class LatencyHistogram:
    """Fixed 10 µs buckets: O(1) record on the hot path, percentiles on demand."""

    def __init__(self) -> None:
        self.counts = [0] * _LAT_BUCKETS
        self.n = 0
        self.max_s = 0.0

    def record(self, lat_s: float) -> None:
        if lat_s < 0.0:
            lat_s = 0.0
        i = int(lat_s * 1e5)
        self.counts[i if i < _LAT_BUCKETS else _LAT_BUCKETS - 1] += 1
        self.n += 1
        if lat_s > self.max_s:
            self.max_s = lat_s

    def percentile_ms(self, q: float) -> float:
        """Upper edge of the bucket holding the q-th percentile, in ms."""
        if not self.n:
            return 0.0
        target = max(1, int(self.n * q / 100.0 + 0.999999))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= target:
                return (i + 1) * _LAT_BUCKET_S * 1e3
        return self.max_s * 1e3


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: parse with httptools, dispatch, keep alive."""

    __slots__ = ("_body", "_headers", "_url", "active", "closed", "parser", "server", "transport")

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self.active: SimRequest | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        if self.active is not None:
            self.server.abort(self.active)
            self.active = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._raw_error(400, b"upgrade not supported")
        except httptools.HttpParserError:
            self._raw_error(400, b"bad request")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._headers = {}

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        self.server.dispatch(self, method, path, b"".join(self._body), keep)

    # writing
    def _raw_error(self, status: int, msg: bytes) -> None:
        if self.transport and not self.transport.is_closing():
            self.send(status, b"text/plain", msg, keep_alive=False)

    def send(
        self, status: int, ctype: bytes, body: bytes, keep_alive: bool = True, extra: bytes = b""
    ) -> None:
        """A whole response with Content-Length."""
        t = self.transport
        if t is None or t.is_closing():
            return
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s"
            b"server: llmtop-sim\r\n%s\r\n"
            % (
                status,
                _REASONS.get(status, "OK").encode(),
                ctype,
                len(body),
                SIM_HEADER,
                extra,
                b"" if keep_alive else b"connection: close\r\n",
            )
        )
        t.write(head + body)
        if not keep_alive:
            t.close()

    def send_json(self, status: int, obj: Any, keep_alive: bool = True) -> None:
        self.send(
            status, b"application/json", json.dumps(obj, separators=(",", ":")).encode(), keep_alive
        )

    def start_stream(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
            + SIM_HEADER
            + b"server: llmtop-sim\r\n\r\n"
        )


def _chunk(payload: bytes) -> bytes:
    """HTTP/1.1 chunked-transfer framing of one payload."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class _StreamSink:
    """Writes one request's SSE chunks; built once per request with pre-encoded pieces."""

    __slots__ = (
        "before_text",
        "chat",
        "conn",
        "continuous",
        "include_usage",
        "keep_alive",
        "prompt_len",
        "role_chunk",
        "server",
        "tail",
        "tail_usage_fmt",
        "usage_chunk_head",
    )

    def __init__(
        self,
        server: SimServer,
        conn: _Conn,
        *,
        chat: bool,
        rid_str: str,
        created: int,
        model: str,
        prompt_len: int,
        include_usage: bool,
        continuous: bool,
        keep_alive: bool,
    ) -> None:
        self.server = server
        self.conn = conn
        self.chat = chat
        self.prompt_len = prompt_len
        self.include_usage = include_usage
        self.continuous = continuous
        self.keep_alive = keep_alive
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = (
            f'data: {{"id":"{rid_str}","object":"{obj}","created":{created},'
            f'"model":{json.dumps(model)},"choices":['
        ).encode()
        self.usage_chunk_head = head
        if chat:
            self.before_text = head + b'{"index":0,"delta":{"content":"'
            # vLLM's chat chunks are dumped with exclude_unset: no usage key unless set.
            self.tail = b'"},"logprobs":null,"finish_reason":%s,"stop_reason":null}]'
            self.tail_usage_fmt = (
                b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n'
            )
            role = (
                head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]'
            )
            if continuous:
                role += (
                    b',"usage":{"prompt_tokens":%d,"total_tokens":%d,'
                    b'"completion_tokens":0}}\n\n' % (prompt_len, prompt_len)
                )
            else:
                role += b"}\n\n"
            self.role_chunk = role
        else:
            self.before_text = head + b'{"index":0,"text":"'
            # vLLM dumps completion chunks with exclude_unset=False: "usage":null appears.
            self.tail = b'","logprobs":null,"finish_reason":%s,"stop_reason":null}]'
            self.tail_usage_fmt = (
                b',"usage":{"prompt_tokens":%d,"total_tokens":%d,'
                b'"completion_tokens":%d,"prompt_tokens_details":null}}\n\n'
            )
            self.role_chunk = b""

    def token(self, req: SimRequest) -> None:
        """Write the chunk for the token `req` just produced (and the ending if done)."""
        t = self.conn.transport
        if t is None or t.is_closing():
            return
        k = req.output_len
        done = req.state == FINISHED
        if done and req.eos and k >= req.stop_at:
            word = b""  # the EOS token itself is not detokenized into text
        else:
            word = _WORD_BYTES[(req.rid * 7 + k - 1) % _NWORDS]
        if done:
            tail = self.tail % (b'"stop"' if req.eos and k >= req.stop_at else b'"length"')
        else:
            tail = self.tail % b"null"
        if self.continuous:
            p = self.prompt_len
            tail += self.tail_usage_fmt % (p, p + k, k)
        elif self.chat:
            tail += b"}\n\n"
        else:
            tail += b',"usage":null}\n\n'
        payload = self.before_text + word + tail
        if k == 1 and self.chat:
            payload = self.role_chunk + payload
        if done:
            if self.include_usage:
                p = self.prompt_len
                if self.chat:
                    u = (
                        b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,'
                        b'"completion_tokens":%d}}\n\n' % (p, p + k, k)
                    )
                else:
                    u = (
                        b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,'
                        b'"completion_tokens":%d}}\n\n' % (p, p + k, k)
                    )
                payload += self.usage_chunk_head + u
            payload += b"data: [DONE]\n\n"
            t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
            self.conn.active = None
            if not self.keep_alive:
                t.close()
        else:
            t.write(b"%x\r\n%s\r\n" % (len(payload), payload))


class _FullSink:
    """Collects nothing per token; answers the whole response when the request finishes."""

    __slots__ = (
        "chat",
        "conn",
        "created",
        "keep_alive",
        "model",
        "prompt_len",
        "rid_str",
        "server",
    )

    def __init__(
        self,
        server: SimServer,
        conn: _Conn,
        *,
        chat: bool,
        rid_str: str,
        created: int,
        model: str,
        prompt_len: int,
        keep_alive: bool,
    ) -> None:
        self.server = server
        self.conn = conn
        self.chat = chat
        self.rid_str = rid_str
        self.created = created
        self.model = model
        self.prompt_len = prompt_len
        self.keep_alive = keep_alive

    def token(self, req: SimRequest) -> None:
        if req.state != FINISHED:
            return
        k = req.output_len
        stop = req.eos and k >= req.stop_at
        n_text = k - 1 if stop else k
        text = "".join(WORDS[(req.rid * 7 + i) % _NWORDS] for i in range(n_text))
        usage = {
            "prompt_tokens": self.prompt_len,
            "total_tokens": self.prompt_len + k,
            "completion_tokens": k,
            "prompt_tokens_details": None,
        }
        reason = "stop" if stop else "length"
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        self.conn.active = None
        self.conn.send_json(
            200,
            {
                "id": self.rid_str,
                "object": obj,
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": usage,
            },
            self.keep_alive,
        )


class SimServer:
    """The engine loop (scheduler + one timer) and the HTTP front end sharing one loop."""

    def __init__(
        self, settings: SimSettings, time_scale: float = 1.0, served_model_name: str | None = None
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.settings = settings
        self.engine = settings.engine
        self.model_name = served_model_name or settings.model.name
        self.time_scale = time_scale
        self.sched = Scheduler(settings)
        self.conns: set[_Conn] = set()
        self.lateness = LatencyHistogram()
        self.wake_lateness = LatencyHistogram()  # first write of each step: timer precision
        self.tokens_emitted = 0
        self.started_at = time.time()
        self._stats_since = time.monotonic()
        self._rid = 0
        self._step: Step | None = None
        self._step_start = 0.0
        self._step_end = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._iter_stats: deque[tuple[Any, ...]] = deque(maxlen=_ITER_STATS_MAX)
        self._queue_lat_sum = 0.0
        self.finished_by_reason = {"length": 0, "stop": 0, "abort": 0}
        self._routes: dict[tuple[bytes, str], Callable[[_Conn, bytes, bool], None]] = {
            (b"GET", "/health"): self._health,
            (b"GET", "/version"): self._version,
            (b"GET", "/v1/models"): self._models,
            (b"GET", "/metrics"): self._metrics,
            (b"GET", "/sim/stats"): self._stats,
            (b"POST", "/sim/reset"): self._reset_stats,
            (b"POST", "/tokenize"): self._tokenize,
            (b"POST", "/v1/completions"): self._completions,
            (b"POST", "/v1/chat/completions"): self._chat,
        }

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 8000) -> int:
        """Bind and listen; returns the bound port (useful with port 0)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Conn(self), host, port, reuse_address=True, backlog=1024
        )
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
            for c in list(self.conns):
                if c.transport is not None:
                    c.transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # -- engine loop -------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        self.sched.add(req)
        if self._step is None:
            self._start_step(time.monotonic())

    def abort(self, req: SimRequest) -> None:
        if req.state != FINISHED:
            self.finished_by_reason["abort"] += 1
        self.sched.abort(req)

    def _start_step(self, start: float) -> None:
        step = self.sched.schedule()
        self._step = step
        if step is None:
            return
        self._step_start = start
        self._step_end = start + step.duration / self.time_scale
        assert self._loop is not None
        # Event-loop timers are millisecond-grained (epoll / libuv): wake up to
        # _WAKE_EARLY_S early and sleep the remainder precisely in _end_step.
        self._timer = self._loop.call_at(self._step_end - _WAKE_EARLY_S, self._end_step)

    def _end_step(self) -> None:
        step = self._step
        assert step is not None
        end = self._step_end
        mono = time.monotonic
        rem = end - mono()
        if rem > _WAKE_EARLY_S + 0.0005:  # a coarse timer fired far too early: re-arm
            assert self._loop is not None
            self._timer = self._loop.call_at(end - _WAKE_EARLY_S, self._end_step)
            return
        if rem > 0:
            time.sleep(rem)  # sub-millisecond: nanosleep is precise to tens of µs
        res = self.sched.complete(step, end)
        self.wake_lateness.record(mono() - end)
        rec = self.lateness.record
        for req in res.emitted:
            sink = req.sink
            if sink is not None:
                rec(mono() - end)
                sink.token(req)
        self.tokens_emitted += len(res.emitted)
        for req in res.finished:
            self.finished_by_reason[req.finish_reason] += 1
        if self.engine == "trtllm":
            self._iter_stats.append(
                (
                    time.time(),
                    self.sched.iterations,
                    step.duration * 1e3,
                    step.num_new_requests,
                    len(self.sched.running) + len(res.finished),
                    len(self.sched.waiting),
                    len(res.finished),
                    step.num_ctx_requests,
                    step.num_gen_requests,
                    step.num_ctx_tokens,
                    self.sched.free_blocks,
                )
            )
        now = mono()
        # Back to back on the model's clock; re-anchor only when far behind, so a stall
        # shows up once in the lateness figures instead of as a catch-up burst.
        self._start_step(end if now - end < 0.05 else now)

    # -- HTTP dispatch -----------------------------------------------------------------
    def dispatch(self, conn: _Conn, method: bytes, path: str, body: bytes, keep: bool) -> None:
        handler = self._routes.get((method, path))
        try:
            if handler is None:
                if any(p == path for (_, p) in self._routes):
                    raise ApiError(
                        405, f"method {method.decode()} not allowed on {path}", "MethodNotAllowed"
                    )
                raise ApiError(404, f"no route {path}", "NotFoundError")
            handler(conn, body, keep)
        except ApiError as e:
            conn.send_json(e.status, _error_body(e), keep)
        except Exception as e:  # never let one request kill the server
            conn.send_json(500, _error_body(ApiError(500, repr(e), "InternalServerError")), keep)

    def _health(self, conn: _Conn, body: bytes, keep: bool) -> None:
        conn.send(200, b"application/json", b"", keep)

    def describe(self) -> dict[str, Any]:
        d = self.settings.describe()
        d["served_model_name"] = self.model_name
        d["time_scale"] = self.time_scale
        return d

    def _version(self, conn: _Conn, body: bytes, keep: bool) -> None:
        conn.send_json(
            200,
            {
                "version": LLMTOP_VERSION,
                "engine": "llmtop-sim",
                "flavour": self.engine,
                "simulated": True,
                "settings": self.describe(),
            },
            keep,
        )

    def _models(self, conn: _Conn, body: bytes, keep: bool) -> None:
        owner = "vllm" if self.engine == "vllm" else "tensorrt_llm"
        card = {
            "id": self.model_name,
            "object": "model",
            "created": int(self.started_at),
            "owned_by": owner,
            "root": self.model_name,
            "parent": None,
            "max_model_len": self.settings.model.max_model_len,
            "simulated": True,
        }
        conn.send_json(200, {"object": "list", "data": [card]}, keep)

    def stats(self) -> dict[str, Any]:
        h = self.lateness
        return {
            "simulated": True,
            "tokens_emitted": self.tokens_emitted,
            "seconds": time.monotonic() - self._stats_since,
            "iterations": self.sched.iterations,
            "lateness_samples": h.n,
            "lateness_p50_ms": h.percentile_ms(50),
            "lateness_p99_ms": h.percentile_ms(99),
            "lateness_p999_ms": h.percentile_ms(99.9),
            "lateness_max_ms": h.max_s * 1e3,
            "wake_lateness_p50_ms": self.wake_lateness.percentile_ms(50),
            "wake_lateness_p99_ms": self.wake_lateness.percentile_ms(99),
            "running": len(self.sched.running),
            "waiting": len(self.sched.waiting),
            "kv_cache_usage": self.sched.kv_usage,
            "preemptions": self.sched.num_preemptions_total,
            "finished": dict(self.finished_by_reason),
        }

    def _stats(self, conn: _Conn, body: bytes, keep: bool) -> None:
        conn.send_json(200, self.stats(), keep)

    def _reset_stats(self, conn: _Conn, body: bytes, keep: bool) -> None:
        """Forget lateness and emission counts (benchmarks measure after a warm-up)."""
        self.lateness = LatencyHistogram()
        self.wake_lateness = LatencyHistogram()
        self.tokens_emitted = 0
        self._stats_since = time.monotonic()
        conn.send_json(200, {"reset": True}, keep)

    def _metrics(self, conn: _Conn, body: bytes, keep: bool) -> None:
        if self.engine == "trtllm":
            conn.send_json(200, self._drain_iter_stats(), keep)
            return
        s = self.sched
        lbl = f'{{engine="0",model_name="{self.model_name}"}}'
        rows = [
            (
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                len(s.running),
            ),
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                len(s.waiting),
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                s.kv_usage,
            ),
            (
                "vllm:num_preemptions",
                "counter",
                "Cumulative number of preemption from the engine.",
                s.num_preemptions_total,
            ),
            (
                "vllm:prompt_tokens",
                "counter",
                "Number of prefill tokens processed.",
                s.prompt_tokens_total,
            ),
            (
                "vllm:generation_tokens",
                "counter",
                "Number of generation tokens processed.",
                s.generation_tokens_total,
            ),
            (
                "vllm:prefix_cache_queries",
                "counter",
                "Prefix cache queries, in terms of number of queried tokens.",
                s.prefix_cache_queries_total,
            ),
            (
                "vllm:prefix_cache_hits",
                "counter",
                "Prefix cache hits, in terms of number of cached tokens.",
                s.prefix_cache_hits_total,
            ),
        ]
        out = ["# llmtop-sim: simulated engine, not a real vLLM"]
        for name, typ, doc, val in rows:
            sample = f"{name}_total" if typ == "counter" else name
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {typ}")
            out.append(f"{sample}{lbl} {float(val)!r}")
        name = "vllm:request_success"
        out.append(f"# HELP {name} Count of successfully processed requests.")
        out.append(f"# TYPE {name} counter")
        for reason in ("length", "stop"):
            out.append(
                f'{name}_total{{engine="0",finished_reason="{reason}",'
                f'model_name="{self.model_name}"}} {float(self.finished_by_reason[reason])!r}'
            )
        conn.send(
            200, b"text/plain; version=0.0.4; charset=utf-8", ("\n".join(out) + "\n").encode(), keep
        )

    def _drain_iter_stats(self) -> list[dict[str, Any]]:
        """trtllm-serve's /metrics: iteration stats since the last read, then emptied."""
        f = self.settings.flavour
        total = self.sched.total_blocks
        weights = self.settings.model.weight_bytes / self.settings.tp
        per_block = self.settings.kv_bytes_per_gpu / max(total, 1)
        out = []
        while self._iter_stats:
            (ts, it, lat_ms, new, active, queued, done, ctx, gen, ctx_tok, free) = (
                self._iter_stats.popleft()
            )
            used = total - free
            out.append(
                {
                    "timestamp": time.strftime("%m-%d-%Y %H:%M:%S", time.localtime(ts)),
                    "iter": it,
                    "iterLatencyMS": lat_ms,
                    "newActiveRequestsQueueLatencyMS": 0.0,
                    "numNewActiveRequests": new,
                    "numActiveRequests": active,
                    "numQueuedRequests": queued,
                    "numCompletedRequests": done,
                    "maxNumActiveRequests": f.max_num_seqs,
                    "maxBatchSizeStatic": f.max_num_seqs,
                    "maxNumTokensStatic": f.max_num_batched_tokens,
                    "gpuMemUsage": int(
                        weights + self.settings.activation_reserve_bytes + per_block * total
                    ),
                    "cpuMemUsage": 0,
                    "pinnedMemUsage": 0,
                    "kvCacheStats": {
                        "maxNumBlocks": total,
                        "freeNumBlocks": free,
                        "usedNumBlocks": used,
                        "tokensPerBlock": f.block_size,
                        "allocTotalBlocks": used,
                        "allocNewBlocks": 0,
                        "reusedBlocks": 0,
                        "missedBlocks": 0,
                        "cacheHitRate": 0.0,
                    },
                    "inflightBatchingStats": {
                        "numScheduledRequests": ctx + gen,
                        "numContextRequests": ctx,
                        "numGenRequests": gen,
                        "numPausedRequests": 0,
                        "numCtxTokens": ctx_tok,
                        "microBatchId": 0,
                        "avgNumDecodedTokensPerIter": 1.0 if gen else 0.0,
                    },
                    "simulated": True,
                }
            )
        return out

    # -- requests ----------------------------------------------------------------------
    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, f"invalid JSON body: {e}") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "request body must be a JSON object")
        return obj

    def _check_fields(self, req: dict[str, Any], allowed: set[str]) -> None:
        if self.engine != "trtllm":
            return
        extra = sorted(set(req) - allowed)
        if extra:
            raise ApiError(
                400,
                "; ".join(
                    f"1 validation error: {k}: Extra inputs are not permitted" for k in extra
                ),
            )
        if "model" not in req:
            raise ApiError(400, "1 validation error: model: Field required")
        so = req.get("stream_options")
        if so and not req.get("stream"):
            raise ApiError(400, "Stream options can only be defined when stream is true.")
        if isinstance(so, dict) and set(so) - _STREAM_OPTION_FIELDS:
            raise ApiError(400, "stream_options: Extra inputs are not permitted")

    def _check_model(self, req: dict[str, Any]) -> None:
        model = req.get("model")
        if model is not None and model != self.model_name:
            raise ApiError(
                404,
                f"The model `{model}` does not exist. Valid: {self.model_name}",
                "NotFoundError",
            )

    def _tokenize(self, conn: _Conn, body: bytes, keep: bool) -> None:
        req = self._parse(body)
        vocab = self.settings.model.vocab
        try:
            if "messages" in req:
                ids = chat_token_ids(
                    req["messages"], bool(req.get("add_generation_prompt", True)), vocab
                )
            elif isinstance(req.get("prompt"), str):
                ids = ([128000] if req.get("add_special_tokens", True) else []) + text_token_ids(
                    req["prompt"], vocab
                )
            else:
                raise ApiError(400, "tokenize needs 'prompt' (string) or 'messages'")
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        conn.send_json(
            200,
            {
                "count": len(ids),
                "max_model_len": self.settings.model.max_model_len,
                "tokens": ids,
                "token_strs": None,
            },
            keep,
        )

    def _completions(self, conn: _Conn, body: bytes, keep: bool) -> None:
        req = self._parse(body)
        self._check_fields(req, _TRT_COMPLETION_FIELDS)
        self._check_model(req)
        prompt = req.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            # Real engines add BOS to text prompts.
            prompt_len = 1 + count_text_tokens(prompt)
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            prompt_len = len(prompt)
        else:
            raise ApiError(
                400,
                "prompt must be a string, a list of token ids, or a batch "
                "of one of those (the simulator takes one prompt per request)",
            )
        if prompt_len == 0:
            raise ApiError(400, "prompt must not be empty")
        self._submit(conn, req, prompt_len, chat=False, keep=keep, default_max=16)

    def _chat(self, conn: _Conn, body: bytes, keep: bool) -> None:
        req = self._parse(body)
        self._check_fields(req, _TRT_CHAT_FIELDS)
        self._check_model(req)
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list")
        try:
            prompt_len = count_chat_tokens(messages, bool(req.get("add_generation_prompt", True)))
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        if req.get("max_completion_tokens") is not None:
            req = dict(req, max_tokens=req["max_completion_tokens"])
        self._submit(conn, req, prompt_len, chat=True, keep=keep, default_max=None)

    def _submit(
        self,
        conn: _Conn,
        req: dict[str, Any],
        prompt_len: int,
        *,
        chat: bool,
        keep: bool,
        default_max: int | None,
    ) -> None:
        max_len = self.settings.model.max_model_len
        if req.get("n", 1) not in (1, None):
            raise ApiError(400, "the simulator supports n=1 only")
        max_tokens = req.get("max_tokens")
        if max_tokens is None:
            max_tokens = default_max if default_max is not None else max_len - prompt_len
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ApiError(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
        if prompt_len + max_tokens > max_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {max_len} tokens. However, you "
                f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages "
                f"or completion.",
            )
        min_tokens = req.get("min_tokens") or 0
        if not isinstance(min_tokens, int) or min_tokens < 0 or min_tokens > max_tokens:
            raise ApiError(400, f"min_tokens must be in [0, max_tokens], got {min_tokens!r}")
        stream = bool(req.get("stream"))
        so = req.get("stream_options")
        if so is not None and not isinstance(so, dict):
            raise ApiError(400, "stream_options must be an object")
        if so and not stream:
            raise ApiError(400, "Stream options can only be defined when stream is true.")
        include_usage = bool(so and so.get("include_usage"))
        continuous = bool(so and so.get("continuous_usage_stats"))

        self._rid += 1
        rid = self._rid
        stop_at = max_tokens
        eos = False
        if not req.get("ignore_eos"):
            rng = random.Random(self.settings.seed * 1_000_003 + rid)
            natural = 1 + int(rng.expovariate(1.0 / EOS_MEAN_TOKENS))
            natural = max(natural, min_tokens)
            if natural < max_tokens:
                stop_at, eos = natural, True
        sreq = SimRequest(
            rid=rid,
            prompt_len=prompt_len,
            max_tokens=max_tokens,
            stop_at=stop_at,
            arrival=time.monotonic(),
            eos=eos,
        )
        rid_str = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if stream:
            sreq.sink = _StreamSink(
                self,
                conn,
                chat=chat,
                rid_str=rid_str,
                created=created,
                model=self.model_name,
                prompt_len=prompt_len,
                include_usage=include_usage,
                continuous=continuous,
                keep_alive=keep,
            )
            conn.start_stream()
        else:
            sreq.sink = _FullSink(
                self,
                conn,
                chat=chat,
                rid_str=rid_str,
                created=created,
                model=self.model_name,
                prompt_len=prompt_len,
                keep_alive=keep,
            )
        conn.active = sreq
        self.submit(sreq)


async def serve(
    settings: SimSettings,
    host: str,
    port: int,
    time_scale: float = 1.0,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run the server until cancelled; `on_ready(port)` fires once listening."""
    server = SimServer(settings, time_scale=time_scale)
    bound = await server.start(host, port)
    if on_ready is not None:
        on_ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()
