"""The server's own prefix-cache figures over a run, from its counters in the /metrics series.

Beside the client's sum of `usage.prompt_tokens_details.cached_tokens`: vLLM (and the
simulator) count `vllm:prefix_cache_queries_total` (prompt tokens looked up) and
`vllm:prefix_cache_hits_total` (tokens found cached); their growth from the first scrape of
the run to the last is the run's hit rate as the server saw it. Engines that only give a
rate (SGLang's `cache_hit_rate`, trtllm's `cacheHitRate`) get its mean over the scrapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")


def _counter(sample: dict[str, Any], names: tuple[str, ...]) -> float | None:
    raw = sample.get("raw") or {}
    for n in names:
        v = raw.get(n)
        if isinstance(v, int | float):
            return float(v)
    return None


def server_prefix_cache(samples: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """{"hit_rate", "hit_tokens", "query_tokens", "source"} over the samples; None when the
    server says nothing about its prefix cache."""
    pairs = [
        (h, q)
        for s in samples
        if (h := _counter(s, HITS)) is not None and (q := _counter(s, QUERIES)) is not None
    ]
    if len(pairs) < 2:
        return _from_gauge(samples)
    (h0, q0), (h1, q1) = pairs[0], pairs[-1]
    hits, queries = h1 - h0, q1 - q0
    if hits < 0 or queries < 0:  # the server restarted in between
        return None
    return {
        "hit_rate": hits / queries if queries else None,
        "hit_tokens": round(hits),
        "query_tokens": round(queries),
        "source": "counters",
    }


def _from_gauge(samples: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Engines that give a hit rate, not counters (SGLang, trtllm): its mean over the run."""
    rates = [r for s in samples if isinstance(r := s.get("prefix_cache_hit_rate"), int | float)]
    if not rates:
        return None
    return {"hit_rate": sum(rates) / len(rates), "hit_tokens": None, "query_tokens": None,
            "source": "gauge (mean of the scrapes)"}  # fmt: skip
