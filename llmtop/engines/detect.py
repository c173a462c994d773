"""Which engine is serving, and where its metrics live: read from what the server itself serves.

Runs once in the parent before the load starts (nothing here is timed). Every probe is a
cheap GET through `llmtop.engines.http` (no redirects, no proxy, a body cap); a probe that
fails simply tells us nothing. What the server says about itself (versions, headers) is
redacted before it is kept: it ends up on screens and in files. The facts each engine gives
away, read in its own source:

- vLLM (``vllm/entrypoints/openai/api_server.py``): ``GET /version`` → ``{"version": ...}``;
  ``/v1/models`` cards ``owned_by: "vllm"``; Prometheus ``/metrics`` (``vllm:*``).
- trtllm-serve (``tensorrt_llm/serve/openai_server.py``): ``/version`` → ``{"version": ...}``;
  cards ``owned_by: "tensorrt_llm"`` (``openai_protocol.py`` ``ModelCard``); ``/metrics`` is a
  JSON list of iteration stats, emptied on each read; ``trtllm_*`` Prometheus names live at
  ``/prometheus/metrics`` when perf metrics are on.
- Triton (KServe v2 protocol, ``docs/protocol``): ``GET /v2`` → ``{"name": "triton",
  "version": ...}``; Prometheus ``nv_trt_llm_*`` on its metrics port (8002 by default).
- SGLang (``python/sglang/srt/entrypoints/http_server.py``): ``/get_server_info`` carries
  ``"version"``; cards ``owned_by: "sglang"``; Prometheus ``sglang:*`` with
  ``--enable-metrics``.
- llama.cpp (``tools/server/server.cpp``): every answer has ``Server: llama.cpp``; ``/props``
  carries ``build_info``; cards ``owned_by: "llamacpp"``; ``llamacpp:*`` with ``--metrics``.
- The built-in simulator (``llmtop/sim/server.py``): header ``x-llmtop-sim: 1`` and
  ``/version`` → ``{"engine": "llmtop-sim", "simulated": true, "flavour": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from llmtop.engines.http import Reply, fetch
from llmtop.errors import redact

VLLM = "vllm"
TRTLLM = "trtllm-serve"
TRITON = "triton"
SGLANG = "sglang"
LLAMACPP = "llama.cpp"
SIM = "llmtop-sim"
UNKNOWN = "unknown"

# metrics_kind: which reader the poller uses (see llmtop.engines.poller)
PROMETHEUS = "prometheus"
TRTLLM_JSON = "trtllm-json"

TRITON_METRICS_PORT = 8002

_LABELS = {
    VLLM: "vLLM",
    TRTLLM: "trtllm-serve",
    TRITON: "Triton",
    SGLANG: "SGLang",
    LLAMACPP: "llama.cpp",
    SIM: "llmtop-sim",
    UNKNOWN: "unknown engine",
}
_OWNERS = {"vllm": VLLM, "tensorrt_llm": TRTLLM, "sglang": SGLANG, "llamacpp": LLAMACPP}


@dataclass(frozen=True)
class EngineInfo:
    """What the target is: engine name, version, and where (and how) to read its metrics."""

    name: str
    version: str | None = None
    metrics_url: str | None = None
    metrics_kind: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """For screens: 'vLLM 0.32.0', 'llmtop-sim (vllm flavour)'."""
        text = _LABELS.get(self.name, self.name)
        if self.version:
            text += f" {self.version}"
        flavour = self.details.get("flavour")
        if self.name == SIM and flavour:
            text += f" ({flavour} flavour)"
        return text

    def public(self) -> dict[str, Any]:
        """The JSON form stored in snapshots and --json output (no secrets: URLs only)."""
        return {
            "name": self.name,
            "label": self.label,
            "version": self.version,
            "metrics_url": self.metrics_url,
            "metrics_kind": self.metrics_kind,
            "details": self.details,
        }


_Reply = Reply
MAX_DETECT_BYTES = 1 << 20  # a model list or a version answer; more is not an engine's
MAX_TEXT = 200  # the longest server-given string kept (a version, a header)


def _text(value: Any) -> str | None:
    """A server-given string as it may be shown: redacted, one line, bounded."""
    if not isinstance(value, str):
        return None
    line = redact(value).replace("\n", " ").strip()
    return line[:MAX_TEXT]


def base_of(url: str) -> str:
    """`http://host:port` (plus any path prefix), without a trailing `/v1`."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def with_port(base: str, port: int) -> str:
    """The same host on another port (Triton serves metrics on a port of their own)."""
    parts = urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{host}:{port}", "", "", ""))


def http_get(url: str, headers: Mapping[str, str], timeout_s: float) -> Reply | None:
    """One bounded GET (llmtop.engines.http); None when nothing usable answered."""
    return fetch(url, headers, timeout_s=timeout_s, max_bytes=MAX_DETECT_BYTES)


def _version_of(reply: _Reply | None) -> str | None:
    if reply is None or reply.status != 200:
        return None
    data = reply.json()
    if isinstance(data, dict) and isinstance(data.get("version"), str):
        return _text(data["version"])
    return None


def _owners(reply: _Reply | None) -> list[str]:
    if reply is None or reply.status != 200:
        return []
    data = reply.json()
    cards = data.get("data") if isinstance(data, dict) else None
    if not isinstance(cards, list):
        return []
    owners = (c.get("owned_by") for c in cards if isinstance(c, dict))
    return [o[:MAX_TEXT] for o in owners if isinstance(o, str)][:64]


def detect_engine(
    base_url: str,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 3.0,
    triton_metrics_port: int = TRITON_METRICS_PORT,
) -> EngineInfo:
    """Name the engine behind `base_url` and where its metrics are; never raises.

    An engine we cannot name comes back as `unknown` with `/metrics` as a guess when it
    answers Prometheus text there; the poller reports a missing or unreadable endpoint once.
    """
    base = base_of(base_url)
    hdrs = dict(headers or {})

    def get(path: str) -> _Reply | None:
        return http_get(base + path, hdrs, timeout_s)

    version_reply = get("/version")
    server = (_text(version_reply.headers.get("server", "")) if version_reply else "") or ""
    server = server.lower()

    # 1. The simulator says so itself.
    vdata = version_reply.json() if version_reply and version_reply.status == 200 else None
    is_sim = version_reply is not None and version_reply.headers.get("x-llmtop-sim") == "1"
    if isinstance(vdata, dict) and (vdata.get("simulated") is True or vdata.get("engine") == SIM):
        is_sim = True
    if is_sim:
        flavour = _text(vdata.get("flavour")) if isinstance(vdata, dict) else None
        kind = TRTLLM_JSON if flavour == "trtllm" else PROMETHEUS
        details: dict[str, Any] = {"simulated": True, "flavour": flavour}
        if isinstance(vdata, dict) and isinstance(vdata.get("settings"), dict):
            details["settings"] = vdata["settings"]
        return EngineInfo(SIM, _version_of(version_reply), base + "/metrics", kind, details)

    models_reply = get("/v1/models")
    owners = _owners(models_reply)
    if not server and models_reply is not None:
        server = (_text(models_reply.headers.get("server", "")) or "").lower()

    # 2. llama.cpp stamps every answer with its Server header.
    if server.startswith("llama.cpp") or "llamacpp" in owners:
        props = get("/props")
        pdata = props.json() if props and props.status == 200 else None
        build = pdata.get("build_info") if isinstance(pdata, dict) else None
        details = {"server_header": server or None}
        if isinstance(pdata, dict):
            details["model_path"] = _text(pdata.get("model_path"))
            slots = pdata.get("total_slots")
            details["total_slots"] = slots if isinstance(slots, int) else None
        version = _text(build)
        return EngineInfo(LLAMACPP, version, base + "/metrics", PROMETHEUS, details)

    # 3. The OpenAI servers name themselves in their model cards.
    owner = next((_OWNERS[o] for o in owners if o in _OWNERS), None)
    if owner == VLLM:
        return EngineInfo(VLLM, _version_of(version_reply), base + "/metrics", PROMETHEUS, {})
    if owner == SGLANG:
        info = get("/get_server_info")
        version = _version_of(info) or _version_of(version_reply)
        return EngineInfo(SGLANG, version, base + "/metrics", PROMETHEUS, {})
    if owner == TRTLLM:
        return _trtllm(base, get, _version_of(version_reply))

    # 4. Triton answers the KServe v2 server-metadata request.
    v2 = get("/v2")
    v2data = v2.json() if v2 and v2.status == 200 else None
    if isinstance(v2data, dict) and (
        v2data.get("name") == "triton" or ("extensions" in v2data and "version" in v2data)
    ):
        metrics = with_port(base, triton_metrics_port) + "/metrics"
        ext = v2data.get("extensions")
        details = {"extensions": [_text(e) for e in ext[:64]] if isinstance(ext, list) else []}
        return EngineInfo(TRITON, _text(v2data.get("version")), metrics, PROMETHEUS, details)

    # 5. SGLang without /v1/models (native API only).
    info = get("/get_server_info")
    idata = info.json() if info and info.status == 200 else None
    if isinstance(idata, dict) and "version" in idata and "model_path" in idata:
        return EngineInfo(SGLANG, _text(str(idata["version"])), base + "/metrics", PROMETHEUS, {})

    details = {"server_header": server or None, "owned_by": owners}
    return EngineInfo(UNKNOWN, _version_of(version_reply), base + "/metrics", PROMETHEUS, details)


def _trtllm(base: str, get: Any, version: str | None) -> EngineInfo:
    """trtllm-serve: prefer its Prometheus endpoint (not drained by reading) when enabled."""
    prom = get("/prometheus/metrics")
    if prom is not None and prom.status == 200 and b"trtllm_" in prom.body:
        return EngineInfo(TRTLLM, version, base + "/prometheus/metrics", PROMETHEUS, {})
    details = {"note": "iteration stats need enable_iter_perf_stats in the engine's config"}
    return EngineInfo(TRTLLM, version, base + "/metrics", TRTLLM_JSON, details)
