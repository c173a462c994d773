"""What the simulator's `/metrics` says: vLLM's Prometheus text, trtllm-serve's JSON stats.

Both are built from the scheduler's counters on demand (a scrape a second at most), never
on the engine's hot path.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from llmtop.sim.model import SimSettings
from llmtop.sim.scheduler import Scheduler

PROM_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
ITER_STATS_MAX = 1000  # trtllm-serve keeps this many iteration stats between reads


def vllm_metrics_text(
    model_name: str, sched: Scheduler, finished_by_reason: dict[str, int]
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
