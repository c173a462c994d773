"""What the simulator's `/metrics` says: vLLM's Prometheus text, trtllm-serve's JSON stats.

Both are built from the scheduler's counters on demand (a scrape a second at most), never
on the engine's hot path.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from typing import Any

from llmtop.sim.model import SimSettings
from llmtop.sim.scheduler import Scheduler, SimRequest

PROM_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
ITER_STATS_MAX = 1000  # trtllm-serve keeps this many iteration stats between reads

# vLLM V1's bucket boundaries (vllm/v1/metrics/loggers.py), in seconds.
TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class Histogram:
    """A Prometheus histogram: cumulative `le` buckets, `_sum`, `_count` on demand."""

    __slots__ = ("bounds", "counts", "doc", "name", "sum")

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf only
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # le is inclusive: a value equal to a bound belongs to that bucket
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, labels: str) -> list[str]:
        """Exposition lines; `labels` is 'k="v",…' without braces."""
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        cum = 0
        for le, c in zip(self.bounds, self.counts, strict=False):
            cum += c
            out.append(f'{self.name}_bucket{{{labels},le="{le!r}"}} {float(cum)!r}')
        cum += self.counts[-1]
        out.append(f'{self.name}_bucket{{{labels},le="+Inf"}} {float(cum)!r}')
        out.append(f"{self.name}_sum{{{labels}}} {self.sum!r}")
        out.append(f"{self.name}_count{{{labels}}} {float(cum)!r}")
        return out


class RequestHistograms:
    """vLLM V1's latency histograms, fed from the simulated engine's own times.

    queue = arrival → first scheduled; prefill = first scheduled → first token;
    decode = first → last token; inference = scheduled → last token; e2e = arrival → last
    token; TTFT = arrival → first token; inter-token latency = between a request's tokens
    (the deprecated `time_per_output_token_seconds` carries the same samples, as in V1).
    """

    def __init__(self) -> None:
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS_S,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS_S,
        )
        self.tpot_old = Histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds."
            "DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
            ITL_BUCKETS_S,
        )
        self.request_tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS_S,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.inference = Histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.prefill = Histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )
        self.decode = Histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS_S,
        )

    def token(self, req: SimRequest, now: float) -> None:
        """`req` got a token at `now` (called after the scheduler counted it)."""
        last = req.last_token_time
        if last is None:
            self.ttft.observe(now - req.arrival)
        else:
            gap = now - last
            self.itl.observe(gap)
            self.tpot_old.observe(gap)
        req.last_token_time = now

    def finished(self, req: SimRequest, now: float) -> None:
        first = req.first_token_time if req.first_token_time is not None else now
        sched = req.scheduled_time if req.scheduled_time is not None else req.arrival
        self.e2e.observe(now - req.arrival)
        self.queue.observe(sched - req.arrival)
        self.prefill.observe(first - sched)
        self.decode.observe(now - first)
        self.inference.observe(now - sched)
        if req.output_len > 1:
            self.request_tpot.observe((now - first) / (req.output_len - 1))

    def lines(self, labels: str) -> list[str]:
        out: list[str] = []
        for h in (
            self.ttft,
            self.itl,
            self.tpot_old,
            self.request_tpot,
            self.e2e,
            self.queue,
            self.inference,
            self.prefill,
            self.decode,
        ):
            out += h.lines(labels)
        return out


def vllm_metrics_text(
    model_name: str,
    sched: Scheduler,
    finished_by_reason: dict[str, int],
    hists: RequestHistograms | None = None,
) -> bytes:
    """The vLLM V1 series the simulator models, with vLLM's names, labels and help."""
    s = sched
    lbl = f'{{engine="0",model_name="{model_name}"}}'
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
            f'model_name="{model_name}"}} {float(finished_by_reason[reason])!r}'
        )
    if hists is not None:
        out += hists.lines(f'engine="0",model_name="{model_name}"')
    return ("\n".join(out) + "\n").encode()


def drain_iter_stats(
    settings: SimSettings, sched: Scheduler, stats: deque[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """trtllm-serve's /metrics: iteration stats since the last read, then emptied."""
    f = settings.flavour
    total = sched.total_blocks
    weights = settings.model.weight_bytes / settings.tp
    per_block = settings.kv_bytes_per_gpu / max(total, 1)
    out = []
    while stats:
        (ts, it, lat_ms, new, active, queued, done, ctx, gen, ctx_tok, free, reused, missed) = (
            stats.popleft()
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
                "gpuMemUsage": int(weights + settings.activation_reserve_bytes + per_block * total),
                "cpuMemUsage": 0,
                "pinnedMemUsage": 0,
                "kvCacheStats": {
                    "maxNumBlocks": total,
                    "freeNumBlocks": free,
                    "usedNumBlocks": used,
                    "tokensPerBlock": f.block_size,
                    "allocTotalBlocks": used,
                    "allocNewBlocks": 0,
                    "reusedBlocks": reused,
                    "missedBlocks": missed,
                    "cacheHitRate": reused / (reused + missed) if reused + missed else 0.0,
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
