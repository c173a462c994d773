"""The server's side of the story: its own metrics, polled at ~1 Hz in a parent-side thread.

Never in the load process: a scrape of vLLM's /metrics is ~50 kB of text to parse, and that
must not delay a token timestamp. Each scrape becomes one plain dict of a common shape,
stamped with `time.perf_counter_ns()` (the clock the load process stamps tokens with, so the
server's running/waiting line up with the client's TTFT in time):

    {"t_ns", "running", "waiting", "kv_cache_usage" (0..1), "preemptions_total",
     "prefix_cache_hit_rate" (0..1, over the last interval), "generation_tps", "prompt_tps"
     (tokens/s from counter deltas between two scrapes), "raw": {source name: value}}

Beside them (issue 15, docs/observability.md): "histograms" (the engine's latency
histograms, `engines.server_latency`), "server_latency" (their figures over the window, in
`latest()` only) and "gpu" (a GPU read, `engines.gpu`, when --gpu-metrics asks for it).

A value the engine does not expose is None. Prometheus text is parsed with
prometheus_client's parser; trtllm-serve's JSON iteration stats (emptied on each read) are
summed over the interval. A missing or unreadable endpoint gives one warning
(`poller.problem`) and the poller stops; the load goes on without server metrics.

Each scrape goes through `llmtop.engines.http` (no redirects, no proxy, at most
`max_bytes` read): an endpoint that answers too much is a failed read, not a stall. A scrape
that takes long (a huge page, a slow server) stretches the interval instead of keeping a
core busy, and nothing a server answers can raise out of the poller.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from llmtop.engines.detect import (
    LLAMACPP,
    SGLANG,
    TRITON,
    TRTLLM,
    TRTLLM_JSON,
    EngineInfo,
)
from llmtop.engines.http import SideRequestError, request
from llmtop.engines.server_latency import LatencyWindow, parse_histograms
from llmtop.errors import describe_exception, redact

FIELDS = (
    "running",
    "waiting",
    "kv_cache_usage",
    "preemptions_total",
    "prefix_cache_hit_rate",
    "generation_tps",
    "prompt_tps",
)
MAX_SAMPLES = 24 * 3600  # a day at 1 Hz
FAILURES_BEFORE_GIVING_UP = 5
EMPTY_JSON_READS_WARNING = 30
MAX_METRICS_BYTES = 8 << 20  # vLLM's page is ~50-200 kB; a page past this is not read
MAX_INTERVAL_S = 30.0  # the longest a slow endpoint stretches the scrape interval to

# Source names per common field, first match wins (older vLLM spelled them gpu_*).
_GAUGES: dict[str, tuple[str, ...]] = {
    "running": (
        "vllm:num_requests_running",
        "trtllm_num_requests_running",
        "sglang:num_running_reqs",
        "llamacpp:requests_processing",
    ),
    "waiting": (
        "vllm:num_requests_waiting",
        "trtllm_num_requests_waiting",
        "sglang:num_queue_reqs",
        "llamacpp:requests_deferred",
    ),
}
_MEAN_GAUGES: dict[str, tuple[str, ...]] = {  # averaged over label sets (data-parallel ranks)
    "kv_cache_usage": (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "trtllm_kv_cache_utilization",
        "sglang:token_usage",
        "llamacpp:kv_cache_usage_ratio",
    ),
    "prefix_cache_hit_rate": ("trtllm_kv_cache_hit_rate", "sglang:cache_hit_rate"),
}
_COUNTERS: dict[str, tuple[str, ...]] = {
    "preemptions_total": ("vllm:num_preemptions_total",),
    "generation_tokens": (
        "vllm:generation_tokens_total",
        "trtllm_generation_tokens_total",
        "sglang:generation_tokens_total",
        "llamacpp:tokens_predicted_total",
    ),
    "prompt_tokens": (
        "vllm:prompt_tokens_total",
        "trtllm_prompt_tokens_total",
        "sglang:prompt_tokens_total",
        "llamacpp:prompt_tokens_total",
    ),
    "prefix_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "prefix_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
}
# Triton's TensorRT-LLM backend: one gauge family, told apart by a label.
_TRITON_REQ = "nv_trt_llm_request_metrics"
_TRITON_KV = "nv_trt_llm_kv_cache_block_metrics"
KNOWN_PREFIXES = ("vllm:", "trtllm_", "sglang:", "llamacpp:", "nv_trt_llm_")

_HINTS = {
    LLAMACPP: "start llama-server with --metrics",
    SGLANG: "start SGLang with --enable-metrics",
    TRITON: "is Triton's metrics port reachable (--allow-metrics, --metrics-port)?",
    TRTLLM: "trtllm-serve needs enable_iter_perf_stats: true in its --extra_llm_api_options",
}


class MetricsError(ValueError):
    """A metrics answer we cannot read."""


# -- pure parsing: bytes in, common-shape values out -----------------------------------------


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) for every sample; MetricsError for anything not Prometheus."""
    try:
        return [
            (s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        ]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise MetricsError(f"not Prometheus text ({exc})") from None


def prometheus_values(samples: list[tuple[str, dict[str, str], float]]) -> dict[str, Any]:
    """The current gauges and counter totals of one scrape (before any rates), plus raw.

    Raises MetricsError when none of the names llmtop knows is there (a page that parses as
    Prometheus text but belongs to something else).
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    triton: dict[tuple[str, str], float] = {}
    for name, labels, value in samples:
        if not name.startswith(KNOWN_PREFIXES) or name.endswith(("_bucket", "_created")):
            continue
        if name == _TRITON_REQ:
            triton[("req", labels.get("request_type", ""))] = value
            continue
        if name == _TRITON_KV:
            triton[("kv", labels.get("kv_cache_block_type", ""))] = value
            continue
        sums[name] = sums.get(name, 0.0) + value
        counts[name] = counts.get(name, 0) + 1
    if not sums and not triton:
        raise MetricsError("none of the metrics llmtop knows (" + ", ".join(KNOWN_PREFIXES) + ")")
    out: dict[str, Any] = {}
    raw: dict[str, float] = {}

    def first(names: tuple[str, ...], mean: bool = False) -> float | None:
        for n in names:
            if n in sums:
                raw[n] = sums[n] / counts[n] if mean else sums[n]
                return raw[n]
        return None

    for key, names in _GAUGES.items():
        out[key] = first(names)
    for key, names in _MEAN_GAUGES.items():
        out[key] = first(names, mean=True)
    for key, names in _COUNTERS.items():
        out[key] = first(names)
    if triton:
        for (group, label), value in triton.items():
            raw[f"{'nv_trt_llm_request_metrics' if group == 'req' else _TRITON_KV}:{label}"] = value
        active = triton.get(("req", "active"), triton.get(("req", "scheduled")))
        out["running"] = out["running"] if active is None else active
        if ("req", "waiting") in triton:
            out["waiting"] = triton[("req", "waiting")]
        frac = triton.get(("kv", "fraction"))
        used, cap = triton.get(("kv", "used")), triton.get(("kv", "max"))
        if frac is None and used is not None and cap:
            frac = used / cap
        if frac is not None:
            out["kv_cache_usage"] = frac
    out["raw"] = raw
    return out


def _delta(now: float | None, before: float | None) -> float | None:
    if now is None or before is None or now < before:  # missing, or the server restarted
        return None
    return now - before


def prometheus_sample(
    values: dict[str, Any], prev: dict[str, Any] | None, t_ns: int, prev_t_ns: int | None
) -> dict[str, Any]:
    """The common-shape sample from this scrape's values and the previous scrape's."""
    dt = (t_ns - prev_t_ns) / 1e9 if prev_t_ns is not None and t_ns > prev_t_ns else None
    p = prev or {}
    sample: dict[str, Any] = {"t_ns": t_ns}
    for key in ("running", "waiting", "kv_cache_usage", "preemptions_total"):
        sample[key] = values.get(key)
    for key, out in (("generation_tokens", "generation_tps"), ("prompt_tokens", "prompt_tps")):
        d = _delta(values.get(key), p.get(key))
        sample[out] = d / dt if d is not None and dt else None
    rate = values.get("prefix_cache_hit_rate")
    if rate is None:
        hits = _delta(values.get("prefix_hits"), p.get("prefix_hits"))
        queries = _delta(values.get("prefix_queries"), p.get("prefix_queries"))
        rate = hits / queries if hits is not None and queries else None
    sample["prefix_cache_hit_rate"] = rate
    sample["raw"] = values.get("raw", {})
    return sample


def parse_trtllm_stats(body: bytes) -> list[dict[str, Any]]:
    """trtllm-serve's /metrics answer: a JSON list of per-iteration stats dicts."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MetricsError(f"not JSON iteration stats ({type(exc).__name__})") from None
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise MetricsError("not a JSON list of iteration stats")
    return data


def trtllm_sample(
    stats: list[dict[str, Any]], t_ns: int, prev_t_ns: int | None, seen_any: bool
) -> dict[str, Any]:
    """One sample from the iterations since the last read (trtllm-serve empties the list).

    Token rates are summed per iteration: generated = numGenRequests x
    avgNumDecodedTokensPerIter, prompt = numCtxTokens. An empty list after stats have been
    seen means the engine was idle; before any, it means we cannot tell (None).
    """
    dt = (t_ns - prev_t_ns) / 1e9 if prev_t_ns is not None and t_ns > prev_t_ns else None
    sample: dict[str, Any] = {"t_ns": t_ns, **dict.fromkeys(FIELDS)}
    if not stats:
        if seen_any:
            sample.update(running=0, waiting=0, generation_tps=0.0, prompt_tps=0.0)
        sample["raw"] = {"iterations": 0}
        return sample
    last = stats[-1]
    gen = ctx = 0.0
    lat: list[float] = []
    completed = 0
    for it in stats:
        ifb = _table(it.get("inflightBatchingStats"))
        per_iter = _number(ifb.get("avgNumDecodedTokensPerIter")) or 1.0
        gen += (_number(ifb.get("numGenRequests")) or 0.0) * per_iter
        ctx += _number(ifb.get("numCtxTokens")) or 0.0
        latency = _number(it.get("iterLatencyMS"))
        if latency is not None:
            lat.append(latency)
        completed += int(_number(it.get("numCompletedRequests")) or 0)
    sample["running"] = _number(last.get("numActiveRequests"))
    sample["waiting"] = _number(last.get("numQueuedRequests"))
    kv = _table(last.get("kvCacheStats"))
    used, cap = _number(kv.get("usedNumBlocks")), _number(kv.get("maxNumBlocks"))
    if used is not None and cap:
        sample["kv_cache_usage"] = used / cap
    sample["prefix_cache_hit_rate"] = _number(kv.get("cacheHitRate"))
    if dt:
        sample["generation_tps"] = gen / dt
        sample["prompt_tps"] = ctx / dt
    sample["raw"] = {
        "iterations": len(stats),
        "iter_latency_ms_mean": sum(lat) / len(lat) if lat else None,
        "iter_latency_ms_max": max(lat) if lat else None,
        "completed_requests": completed,
        "paused_requests": _number(
            _table(last.get("inflightBatchingStats")).get("numPausedRequests")
        ),
        "last_iter": _number(last.get("iter")),
    }
    return sample


def _number(value: Any) -> float | None:
    """A finite JSON number of sane size, else None (a string, a list, null, a bool, 1e400)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or abs(value) >= 1e15:
        return None
    return value


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# -- the poller ------------------------------------------------------------------------------


class MetricsPoller:
    """Scrapes one metrics endpoint about once a second in a daemon thread of the parent.

    `latest()` is what `LoadSession(server_sample=poller.latest)` copies into each telemetry
    frame; `samples()` the whole series for snapshots. Thread-safe: the thread only replaces
    references and appends under a lock; readers get copies.
    """

    def __init__(
        self,
        url: str | None,
        kind: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        engine: str | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        max_bytes: int = MAX_METRICS_BYTES,
        on_problem: Callable[[str], None] | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
        gpu: Any = None,
        window_s: float = 10.0,
    ) -> None:
        self.url = url
        # issue 15: the server's latency histograms per scrape, and GPU telemetry beside them
        self.gpu = gpu  # engines.gpu source (DCGM or NVML), read once per scrape
        self.latency = LatencyWindow(window_s)
        self.kind = kind
        self.engine = engine
        self.headers = dict(headers or {})
        self.interval_s = interval_s
        self._interval_s = interval_s  # stretched while scrapes are slow
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.on_problem = on_problem
        self.clock = clock
        self.problem: str | None = None
        self.given_up = False
        self.errors = 0
        self._samples: deque[dict[str, Any]] = deque(maxlen=MAX_SAMPLES)
        self._latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prev_values: dict[str, Any] | None = None
        self._prev_t: int | None = None
        self._ok = 0
        self._failures = 0
        self._json_seen = False
        self._json_empty = 0
        self.gpu_errors = 0
        if url is None and gpu is None:
            self._give_up(f"no metrics endpoint is known for {engine or 'this server'}")

    @classmethod
    def for_engine(
        cls, info: EngineInfo, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> MetricsPoller:
        """A poller for what `detect_engine` found."""
        return cls(info.metrics_url, info.metrics_kind, headers, engine=info.name, **kw)

    # -- public API ----------------------------------------------------------------------
    def start(self) -> MetricsPoller:
        if self._thread is None and (not self.given_up or self.gpu is not None):
            self._thread = threading.Thread(target=self._run, name="llmtop-metrics", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def finish(self) -> list[dict[str, Any]]:
        """Stop, scrape once more, and return the series.

        The last 1 Hz scrape can come up to a second before the last request ends; one more
        read after the load makes the server's counters cover the whole run (a snapshot's
        server-side token total can then be checked against the client's). Never raises:
        a bad last answer must not cost the run's results.
        """
        try:
            self.stop()
            if self._thread is None or not self._thread.is_alive():
                self.poll_once()
        except Exception as exc:  # poll_once catches what it knows; this is the last net
            self._warn(f"the last server metrics read failed: {describe_exception(exc)}")
        return self.samples()

    def latest(self) -> dict[str, Any] | None:
        return self._latest

    def samples(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._samples)

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> MetricsPoller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one scrape ----------------------------------------------------------------------
    def poll_once(self) -> dict[str, Any] | None:
        """Scrape once; the new sample, or None (a failure, counted; maybe the last straw)."""
        if self.given_up or self.url is None:
            return self._gpu_only() if self.gpu is not None else None
        t0 = self.clock()
        started = time.monotonic()
        unreachable = ""
        try:
            reply = request(
                self.url, self.headers, timeout_s=self.timeout_s, max_bytes=self.max_bytes
            )
        except SideRequestError as exc:
            reply, unreachable = None, exc.why
        t_ns = (t0 + self.clock()) // 2  # the server read its gauges about half-way
        try:
            if reply is None:
                raise MetricsError(f"cannot reach {redact(self.url)}: {unreachable}")
            if reply.status != 200:
                hint = _HINTS.get(self.engine or "", "")
                raise MetricsError(
                    f"{self.url} answered HTTP {reply.status}" + (f"; {hint}" if hint else "")
                )
            if self.kind == TRTLLM_JSON:
                sample = self._json(reply.body, t_ns)
            else:
                text = reply.body.decode("utf-8", "replace")
                parsed = parse_prometheus(text)
                values = prometheus_values(parsed)
                sample = prometheus_sample(values, self._prev_values, t_ns, self._prev_t)
                self._prev_values = values
                hists = parse_histograms(parsed)
                if hists:
                    sample["histograms"] = hists
                    sample["server_latency"] = self.latency.add(t_ns, hists)
        except MetricsError as exc:
            self._failed(str(exc))
            return self._gpu_only() if self.gpu is not None else None
        except Exception as exc:  # types a server should not send: a failed read, not a crash
            self._failed(f"unreadable answer from {redact(self.url)}: {describe_exception(exc)}")
            return self._gpu_only() if self.gpu is not None else None
        finally:
            self._pace(time.monotonic() - started)
        self._prev_t = t_ns
        self._ok += 1
        self._failures = 0
        self._add_gpu(sample)
        # the series keeps the histograms (a run's figures come from them); the window
        # figures are for the live view only, and would double a snapshot's size
        kept = {k: v for k, v in sample.items() if k != "server_latency"}
        with self._lock:
            self._samples.append(kept)
        self._latest = sample
        return sample

    def _add_gpu(self, sample: dict[str, Any]) -> None:
        """The GPU read beside this scrape (a failed read is said once and skipped)."""
        if self.gpu is None:
            return
        try:
            sample["gpu"] = self.gpu.read()
        except Exception as exc:  # GpuError or a driver's: the scrape keeps its server part
            self.gpu_errors += 1
            if self.gpu_errors == 1 and self.on_problem is not None:
                try:
                    self.on_problem(f"GPU metrics read failed: {describe_exception(exc)}")
                except Exception:
                    pass

    def _gpu_only(self) -> dict[str, Any] | None:
        """A sample with GPU telemetry alone (the server's own metrics are not there)."""
        sample: dict[str, Any] = {"t_ns": self.clock(), **dict.fromkeys(FIELDS), "raw": {}}
        self._add_gpu(sample)
        if "gpu" not in sample:
            return None
        with self._lock:
            self._samples.append(sample)
        self._latest = sample
        return sample

    def _json(self, body: bytes, t_ns: int) -> dict[str, Any]:
        stats = parse_trtllm_stats(body)
        if stats:
            self._json_seen = True
        else:
            self._json_empty += 1
            if not self._json_seen and self._json_empty == EMPTY_JSON_READS_WARNING:
                self._warn(f"{self.url} has returned no iteration stats yet; {_HINTS[TRTLLM]}")
        return trtllm_sample(stats, t_ns, self._prev_t, self._json_seen)

    def _pace(self, took_s: float) -> None:
        """A scrape that takes more than half the interval stretches it (to twice its cost):
        the poller thread never keeps a core busy more than half the time."""
        self._interval_s = min(max(self.interval_s, 2 * took_s), MAX_INTERVAL_S)

    def _failed(self, why: str) -> None:
        self.errors += 1
        self._failures += 1
        if self._ok == 0:
            self._give_up(f"server metrics unavailable: {why}")
        elif self._failures >= FAILURES_BEFORE_GIVING_UP:
            self._give_up(f"server metrics stopped after {self._failures} failed reads: {why}")

    def _give_up(self, message: str) -> None:
        self.given_up = True
        self._warn(message + "; the load goes on without them")
        if self.gpu is None:
            self._stop.set()

    def _warn(self, message: str) -> None:
        if self.problem is None:
            self.problem = message = redact(message)
            if self.on_problem is not None:
                try:
                    self.on_problem(message)
                except Exception:  # a broken callback must not kill the poller thread
                    pass

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.poll_once()
            next_t += self._interval_s
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (a slow server): do not burst to catch up
                next_t = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)
