"""Empty the engine's prefix cache between measurements (`--reset-prefix-cache`).

Each engine's own reset, called in the parent before a run, a repeat or a sweep point:

- vLLM (`vllm/entrypoints/serve/dev/cache/api_router.py`): `POST /reset_prefix_cache`
  → `{"success": bool}`; served only when the server runs with `VLLM_SERVER_DEV_MODE=1`
  (404 otherwise). It fails (`success: false`) while running requests hold blocks, so it is
  retried a few times. The built-in simulator (vllm flavour) serves the same route.
- SGLang (`python/sglang/srt/entrypoints/http_server.py`): `POST /flush_cache` (200 when
  flushed; it refuses while requests are running).
- trtllm-serve, Triton, llama.cpp: no such endpoint; the note says so.

Nothing raises: the result is one line for the notes.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from llmtop.engines.detect import LLAMACPP, SGLANG, SIM, TRITON, TRTLLM, VLLM, EngineInfo, base_of

RETRIES = 5
RETRY_WAIT_S = 0.5
_ROUTES = {VLLM: "/reset_prefix_cache", SIM: "/reset_prefix_cache", SGLANG: "/flush_cache"}
_NONE = {
    TRTLLM: "trtllm-serve has no prefix-cache reset endpoint",
    TRITON: "Triton has no prefix-cache reset endpoint",
    LLAMACPP: "llama.cpp has no prefix-cache reset endpoint (its slots' caches stay)",
}


def _post(url: str, headers: Mapping[str, str], timeout_s: float) -> tuple[int, bytes]:
    """One bounded POST with no body: never a redirect followed, never a proxy."""
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        conn.request(
            "POST", parts.path or "/", body=b"", headers={"User-Agent": "llmtop", **headers}
        )
        resp = conn.getresponse()
        return resp.status, resp.read(64 << 10)
    finally:
        conn.close()


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _ok(status: int, body: object) -> bool:
    if status != 200:
        return False
    return not (isinstance(body, dict) and body.get("success") is False)


def reset_prefix_cache(
    url: str, engine: EngineInfo, headers: Mapping[str, str], sleep: object = time.sleep
) -> tuple[bool, str]:
    """(reset done, one line saying what happened) for the engine at `url`."""
    if engine.name in _NONE:
        return False, f"--reset-prefix-cache: {_NONE[engine.name]}; the cache was not reset"
    routes = (
        [_ROUTES[engine.name]] if engine.name in _ROUTES else list(dict.fromkeys(_ROUTES.values()))
    )
    base = base_of(url)
    last = ""
    for route in routes:
        for attempt in range(RETRIES):
            try:
                status, body = _post(base + route, headers, timeout_s=10)
            except (OSError, http.client.HTTPException) as exc:
                last = f"{route}: {type(exc).__name__}"
                break
            if status in (404, 405):
                last = f"{route}: HTTP {status}"
                break
            if _ok(status, _json(body)):
                return True, f"prefix cache reset ({route})"
            last = f"{route}: HTTP {status} {body[:120].decode('utf-8', 'replace')}"
            if attempt + 1 < RETRIES:
                sleep(RETRY_WAIT_S)  # type: ignore[operator]
    hint = (
        " (vLLM serves it only with VLLM_SERVER_DEV_MODE=1)"
        if engine.name in (VLLM, SIM) or engine.name not in _ROUTES
        else ""
    )
    return False, f"--reset-prefix-cache: the engine has no working reset ({last}){hint}"
