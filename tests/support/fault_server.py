"""An aiohttp OpenAI-compatible streaming server whose behaviour each test scripts.

Real sockets on loopback, no HTTP mocks: the test picks what request N gets (a normal
stream, an HTTP error, a cut stream, a malformed event, silence...). The first request the
server sees is llmtop's preflight probe unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Behaviour:
    """What one request gets."""

    kind: str = "ok"  # ok | status | cut | malformed | hang | error_event | garbage_http
    status: int = 200
    after_tokens: int = 0  # for cut / malformed / error_event: tokens sent first
    tokens_per_chunk: int = 1
    usage: str = "continuous"  # continuous | last | none
    ttft_s: float = 0.005
    itl_s: float = 0.002


Plan = Callable[[int, dict[str, Any]], Behaviour]


@dataclass
class FaultServer:
    plan: Plan = field(default=lambda i, body: Behaviour())
    models: tuple[str, ...] = ("test-model",)
    strict_fields: frozenset[str] | None = None  # like trtllm-serve: reject unknown fields
    require_key: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    ssl_context: ssl.SSLContext | None = None  # serve HTTPS
    url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> FaultServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers -----------------------------------------------------------------------
    def _auth_ok(self, request: web.Request) -> bool:
        return (
            self.require_key is None
            or request.headers.get("Authorization") == f"Bearer {self.require_key}"
        )

    async def _models(self, request: web.Request) -> web.Response:
        if not self._auth_ok(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        data = [{"id": m, "object": "model", "owned_by": "test"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if not self._auth_ok(request):
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        index = len(self.requests)
        self.requests.append(body)
        self.headers_seen.append(dict(request.headers))
        if self.strict_fields is not None:
            extra = sorted(set(body) - self.strict_fields)
            if extra:
                msg = f"Extra inputs are not permitted: {extra}"
                return web.json_response({"object": "error", "message": msg}, status=400)
        if body.get("model") not in self.models:
            msg = f"The model `{body.get('model')}` does not exist."
            return web.json_response(
                {"object": "error", "message": msg, "type": "NotFoundError"}, status=404
            )
        b = self.plan(index, body)
        if b.kind == "status":
            return web.json_response(
                {"error": {"message": f"scripted {b.status}"}}, status=b.status
            )
        if b.kind == "hang":
            await asyncio.sleep(3600)
        chat = request.path.endswith("chat/completions")
        n = int(body.get("max_tokens", 16))
        prompt = body.get("prompt")
        p_tokens = len(prompt) if isinstance(prompt, list) else 7
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        continuous = b.usage == "continuous" and bool(
            body.get("stream_options", {}).get("continuous_usage_stats")
        )

        def usage(done: int) -> dict[str, int]:
            return {
                "prompt_tokens": p_tokens,
                "total_tokens": p_tokens + done,
                "completion_tokens": done,
            }

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        if chat:
            first: dict[str, Any] = {
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]
            }
            if continuous:
                first["usage"] = usage(0)
            await send(first)
        await asyncio.sleep(b.ttft_s)
        done = 0
        while done < n:
            if b.kind in ("cut", "malformed", "error_event") and done >= b.after_tokens:
                break
            k = min(b.tokens_per_chunk, n - done)
            done += k
            text = "ab" * k
            choice: dict[str, Any] = (
                {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
            )
            choice["finish_reason"] = "length" if done == n else None
            chunk: dict[str, Any] = {"id": "c", "object": "chunk", "choices": [choice]}
            if continuous or (b.usage == "last" and done == n):
                chunk["usage"] = usage(done)
            await send(chunk)
            if done < n:
                await asyncio.sleep(b.itl_s)
        if b.kind == "cut":
            assert request.transport is not None
            request.transport.abort()
            return resp
        if b.kind == "malformed":
            await resp.write(b"data: {this is not json\n\n")
            await asyncio.sleep(0.05)
            return resp
        if b.kind == "error_event":
            await send({"error": {"message": "scripted failure mid-stream", "code": 500}})
            await resp.write(b"data: [DONE]\n\n")
            return resp
        if body.get("stream_options", {}).get("include_usage"):
            await send({"id": "c", "choices": [], "usage": usage(done)})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
