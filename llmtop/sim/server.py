"""The simulated engine's server: the iteration loop and the OpenAI-compatible routes.

One iteration timer drives every stream: each step writes one pre-assembled SSE chunk per
stream straight to its transport (`llmtop.sim.wire`), with no coroutine or task per chunk
(see docs/sim.md for the measurement that led here). The HTTP/1.1 connection is
`llmtop.sim.http`, request validation `llmtop.sim.fields`, `/metrics` `llmtop.sim.prom`.
The server measures its own emission lateness (write time minus the step end the
performance model scheduled) and reports it at `/sim/stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from llmtop import __version__ as LLMTOP_VERSION
from llmtop.sim import fields
from llmtop.sim.gpu import GpuMeter
from llmtop.sim.http import MAX_BODY_BYTES, MAX_HEADER_BYTES, ApiError, Conn
from llmtop.sim.model import SimSettings
from llmtop.sim.prom import (
    ITER_STATS_MAX,
    PROM_CONTENT_TYPE,
    RequestHistograms,
    drain_iter_stats,
    vllm_metrics_text,
)
from llmtop.sim.scheduler import FINISHED, Scheduler, SimRequest, Step
from llmtop.sim.wire import FullSink, StreamSink

EOS_MEAN_TOKENS = 256  # mean length of a seeded natural ending when ignore_eos is off
_LAT_BUCKET_S = 10e-6
_LAT_BUCKETS = 100_000  # 10 µs buckets up to 1 s
_WAKE_EARLY_S = 0.0012


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


class SimServer:
    """The engine loop (scheduler + one timer) and the HTTP front end sharing one loop."""

    def __init__(
        self,
        settings: SimSettings,
        time_scale: float = 1.0,
        served_model_name: str | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.settings = settings
        self.engine = settings.engine
        self.model_name = served_model_name or settings.model.name
        self.time_scale = time_scale
        self.sched = Scheduler(settings)
        self.conns: set[Conn] = set()
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
        self._iter_stats: deque[tuple[Any, ...]] = deque(maxlen=ITER_STATS_MAX)
        self._queue_lat_sum = 0.0
        self.finished_by_reason = {"length": 0, "stop": 0, "abort": 0}
        # vLLM's latency histograms (the trtllm flavour's /metrics has none) and the GPUs
        self.hists = RequestHistograms() if self.engine == "vllm" else None
        self.gpu_meter = GpuMeter(settings, time.monotonic(), time_scale)
        self._routes: dict[tuple[bytes, str], Callable[[Conn, bytes, bool], None]] = {
            (b"GET", "/health"): self._health,
            (b"GET", "/version"): self._version,
            (b"GET", "/v1/models"): self._models,
            (b"GET", "/metrics"): self._metrics,
            (b"GET", "/dcgm/metrics"): self._dcgm_metrics,
            (b"GET", "/sim/stats"): self._stats,
            (b"POST", "/sim/reset"): self._reset_stats,
            (b"POST", "/tokenize"): self._tokenize,
            (b"POST", "/v1/completions"): self._completions,
            (b"POST", "/v1/chat/completions"): self._chat,
        }
        if self.engine == "vllm":  # trtllm-serve has no such route
            self._routes[(b"POST", "/reset_prefix_cache")] = self._reset_prefix_cache

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 8000) -> int:
        """Bind and listen; returns the bound port (useful with port 0)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: Conn(self, self.max_header_bytes, self.max_body_bytes),
            host,
            port,
            reuse_address=True,
            backlog=1024,
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
        for req in step.admitted:
            req.scheduled_time = start
        self.gpu_meter.step_started(start, step.gpu_s, step.compute_share)
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
        self.gpu_meter.step_ended(end)
        hists = self.hists
        if hists is not None:
            for req in res.emitted:
                hists.token(req, end)
        for req in res.finished:
            self.finished_by_reason[req.finish_reason] += 1
            if hists is not None:
                hists.finished(req, end)
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
                    self.sched.blocks_reused_total,
                    self.sched.blocks_missed_total,
                )
            )
        now = mono()
        # Back to back on the model's clock; re-anchor only when far behind, so a stall
        # shows up once in the lateness figures instead of as a catch-up burst.
        self._start_step(end if now - end < 0.05 else now)

    # -- HTTP dispatch -----------------------------------------------------------------
    def dispatch(self, conn: Conn, method: bytes, path: str, body: bytes, keep: bool) -> None:
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
            conn.send_error(e, keep)
        except Exception as e:  # never let one request kill the server
            conn.send_error(ApiError(500, repr(e), "InternalServerError"), keep)

    def _health(self, conn: Conn, body: bytes, keep: bool) -> None:
        conn.send(200, b"application/json", b"", keep)

    def describe(self) -> dict[str, Any]:
        d = self.settings.describe()
        d["served_model_name"] = self.model_name
        d["time_scale"] = self.time_scale
        return d

    def _version(self, conn: Conn, body: bytes, keep: bool) -> None:
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

    def _models(self, conn: Conn, body: bytes, keep: bool) -> None:
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

    def _stats(self, conn: Conn, body: bytes, keep: bool) -> None:
        conn.send_json(200, self.stats(), keep)

    def _reset_stats(self, conn: Conn, body: bytes, keep: bool) -> None:
        """Forget lateness and emission counts (benchmarks measure after a warm-up)."""
        self.lateness = LatencyHistogram()
        self.wake_lateness = LatencyHistogram()
        self.tokens_emitted = 0
        self._stats_since = time.monotonic()
        conn.send_json(200, {"reset": True}, keep)

    def _metrics(self, conn: Conn, body: bytes, keep: bool) -> None:
        if self.engine == "trtllm":
            conn.send_json(200, drain_iter_stats(self.settings, self.sched, self._iter_stats), keep)
            return
        text = vllm_metrics_text(self.model_name, self.sched, self.finished_by_reason, self.hists)
        conn.send(200, PROM_CONTENT_TYPE, text, keep)

    def _dcgm_metrics(self, conn: Conn, body: bytes, keep: bool) -> None:
        """dcgm-exporter's text for the simulated GPUs (one series per tensor-parallel GPU)."""
        conn.send(200, PROM_CONTENT_TYPE, self.gpu_meter.text(time.monotonic()), keep)

    # -- requests ----------------------------------------------------------------------
    def _tokenize(self, conn: Conn, body: bytes, keep: bool) -> None:
        ids = fields.tokenize_ids(fields.parse_body(body), self.settings.model.vocab)
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

    def _validated(self, body: bytes, trt_fields: frozenset[str]) -> dict[str, Any]:
        req = fields.parse_body(body)
        if self.engine == "trtllm":
            fields.check_trt_fields(req, trt_fields)
        fields.check_model(req, self.model_name)
        return req

    def _completions(self, conn: Conn, body: bytes, keep: bool) -> None:
        req = self._validated(body, fields.TRT_COMPLETION_FIELDS)
        ids: list[int] | None = None
        if self.sched.caching:  # the prompt's ids are what the prefix cache hashes
            ids = fields.completion_prompt_ids(req, self.settings.model.vocab)
            prompt_len = len(ids)
        else:
            prompt_len = fields.completion_prompt_len(req)
        self._submit(conn, req, prompt_len, ids, chat=False, keep=keep, default_max=16)

    def _chat(self, conn: Conn, body: bytes, keep: bool) -> None:
        req = self._validated(body, fields.TRT_CHAT_FIELDS)
        ids: list[int] | None = None
        if self.sched.caching:
            ids = fields.chat_prompt_ids(req, self.settings.model.vocab)
            prompt_len = len(ids)
        else:
            prompt_len = fields.count_chat(req)
        if req.get("max_completion_tokens") is not None:
            req = dict(req, max_tokens=req["max_completion_tokens"])
        self._submit(conn, req, prompt_len, ids, chat=True, keep=keep, default_max=None)

    def _reset_prefix_cache(self, conn: Conn, body: bytes, keep: bool) -> None:
        """vLLM's POST /reset_prefix_cache: drop cached blocks nobody uses; 200, no body."""
        self.sched.reset_prefix_cache()
        conn.send(200, b"application/json", b"", keep)

    def _submit(
        self,
        conn: Conn,
        req: dict[str, Any],
        prompt_len: int,
        token_ids: list[int] | None,
        *,
        chat: bool,
        keep: bool,
        default_max: int | None,
    ) -> None:
        lim = fields.generation_limits(
            req, prompt_len, self.settings.model.max_model_len, default_max
        )
        self._rid += 1
        rid = self._rid
        stop_at = lim.max_tokens
        eos = False
        if not lim.ignore_eos:
            rng = random.Random(self.settings.seed * 1_000_003 + rid)
            natural = 1 + int(rng.expovariate(1.0 / EOS_MEAN_TOKENS))
            natural = max(natural, lim.min_tokens)
            if natural < lim.max_tokens:
                stop_at, eos = natural, True
        sreq = SimRequest(
            rid=rid,
            prompt_len=prompt_len,
            max_tokens=lim.max_tokens,
            stop_at=stop_at,
            arrival=time.monotonic(),
            eos=eos,
            token_ids=token_ids,
        )
        rid_str = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if lim.stream:
            sreq.sink = StreamSink(
                conn,
                chat=chat,
                rid_str=rid_str,
                created=created,
                model=self.model_name,
                prompt_len=prompt_len,
                include_usage=lim.include_usage,
                continuous=lim.continuous,
                keep_alive=keep,
            )
            conn.start_stream()
        else:
            sreq.sink = FullSink(
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
