"""The engine's own latency histograms, read from its Prometheus page.

Names, per engine (checked in each engine's source):

- vLLM V1 (vllm/v1/metrics/loggers.py, checked in 0.32): `vllm:time_to_first_token_seconds`,
  `vllm:inter_token_latency_seconds` (older releases: `vllm:time_per_output_token_seconds`,
  the same per-token gaps; some exported both), `vllm:e2e_request_latency_seconds`,
  `vllm:request_queue_time_seconds`, `vllm:request_prefill_time_seconds`,
  `vllm:request_decode_time_seconds`.
- SGLang (python/sglang/srt/metrics/collector.py): `sglang:time_to_first_token_seconds`,
  `sglang:inter_token_latency_seconds` (older `sglang:time_per_output_token_seconds`),
  `sglang:e2e_request_latency_seconds`, `sglang:queue_time_seconds`. No prefill or decode
  histogram of a request's phases: those keys stay None.
- TensorRT-LLM (trtllm-serve's `/prometheus/metrics`): `trtllm_time_to_first_token_seconds`,
  `trtllm_time_per_output_token_seconds` (per request: (E2E - TTFT) / (tokens - 1), not
  per gap), `trtllm_e2e_request_latency_seconds`, `trtllm_request_queue_time_seconds`. No
  prefill / decode histograms. trtllm-serve's JSON `/metrics` and Triton's backend export no
  latency histograms at all.

Label sets (an engine index, data-parallel ranks, model names) are summed bucket by bucket,
as a fleet-wide histogram is. The percentile arithmetic is `llmtop.metrics.serverside`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from llmtop.metrics.serverside import LATENCY_KEYS, latency_figures, spectrum_ms

HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft": (
        "vllm:time_to_first_token_seconds",
        "sglang:time_to_first_token_seconds",
        "trtllm_time_to_first_token_seconds",
    ),
    "queue": (
        "vllm:request_queue_time_seconds",
        "sglang:queue_time_seconds",
        "trtllm_request_queue_time_seconds",
    ),
    "prefill": ("vllm:request_prefill_time_seconds",),
    "decode": ("vllm:request_decode_time_seconds",),
    "e2el": (
        "vllm:e2e_request_latency_seconds",
        "sglang:e2e_request_latency_seconds",
        "trtllm_e2e_request_latency_seconds",
    ),
    "itl": (
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
        "sglang:inter_token_latency_seconds",
        "sglang:time_per_output_token_seconds",
        "trtllm_time_per_output_token_seconds",
    ),
}
SPECTRUM_KEYS = ("ttft", "itl", "e2el")
_WANTED = {name: key for key, names in HISTOGRAMS.items() for name in names}


def parse_histograms(
    samples: Iterable[tuple[str, dict[str, str], float]],
) -> dict[str, dict[str, Any]]:
    """{key: {"source", "le": [s], "cum": [counts, +Inf last], "sum"}} from parsed samples.

    The first name of each key's list that is present wins (a vLLM that still exports the
    deprecated name beside the new one is read by the new one).
    """
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    for name, labels, value in samples:
        if name.endswith("_bucket"):
            base = name[: -len("_bucket")]
            if base not in _WANTED:
                continue
            try:
                le = float(labels.get("le", "nan"))
            except ValueError:
                continue
            if le != le:  # NaN: not a bucket
                continue
            b = buckets.setdefault(base, {})
            b[le] = b.get(le, 0.0) + value
        elif name.endswith("_sum") and name[: -len("_sum")] in _WANTED:
            base = name[: -len("_sum")]
            sums[base] = sums.get(base, 0.0) + value
    out: dict[str, dict[str, Any]] = {}
    for key, names in HISTOGRAMS.items():
        for name in names:
            b = buckets.get(name)
            if not b or float("inf") not in b:
                continue
            bounds = sorted(le for le in b if le != float("inf"))
            out[key] = {
                "source": name,
                "le": bounds,
                "cum": [b[le] for le in bounds] + [b[float("inf")]],
                "sum": sums.get(name),
            }
            break
    return out


class LatencyWindow:
    """The server's percentiles over the last `window_s`, from the scrapes kept that long.

    Each scrape's histograms go in; out comes the `"server_latency"` of the requests the
    server finished between the oldest kept scrape and this one (the live view).
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_ns = int(window_s * 1e9)
        self._kept: deque[tuple[int, dict[str, dict[str, Any]]]] = deque()

    def add(self, t_ns: int, hists: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        self._kept.append((t_ns, hists))
        while len(self._kept) > 2 and self._kept[1][0] <= t_ns - self.window_ns:
            self._kept.popleft()
        if len(self._kept) < 2 or not hists:
            return None
        before = self._kept[0][1]
        out: dict[str, Any] = {}
        for key in LATENCY_KEYS:
            now = hists.get(key)
            out[f"{key}_ms"] = latency_figures(now, before.get(key)) if now else None
        out["window_s"] = (t_ns - self._kept[0][0]) / 1e9
        out["spectrum"] = {  # (quantile, ms) for the UI's percentile-spectrum view
            key: spectrum_ms(hists[key], before.get(key)) for key in SPECTRUM_KEYS if key in hists
        }
        return out
