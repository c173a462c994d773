"""An aiohttp OpenAI-compatible server that remembers what it was asked and what it answered.

For the workload tests (conversations, prefix groups, reasoning, cached tokens): every
request body is kept, and so is the exact text each stream sent, so a test can check that a
conversation's next turn carried the model's actual answer, byte for byte. The generated
text mixes characters that JSON must escape (quotes, backslashes, newlines) and non-ASCII.

Its "tokenizer" counts whitespace-separated words (so one word is one token), and its usage
reports `prompt_tokens_details.cached_tokens` the way vLLM does (only when > 0, on the final
usage chunk): here, the prompt tokens shared with an earlier request, in 16-token blocks.
Real sockets on loopback, as every llmtop test server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PIECES = ("la", ' "q"', " back\\slash", "\nnew", " café", " ✓", " tab\t", " }{", " ok")
BLOCK = 16


def count_words(text: str) -> int:
    return len(text.split())


def prompt_tokens_of(body: dict[str, Any]) -> list[str]:
    """The prompt as a list of 'tokens': ids for a token-id prompt, else words."""
    if "messages" in body:
        words: list[str] = []
        for m in body["messages"]:
            words += [f"<{m['role']}>", *str(m["content"]).split()]
        return words
    p = body.get("prompt")
    return [str(t) for t in p] if isinstance(p, list) else str(p).split()


@dataclass
class WorkloadServer:
    reasoning: str | None = None  # None, "reasoning_content" or "reasoning"
    reasoning_tokens: int = 3
    token_delay_s: float = 0.002
    tokenize: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[int, str] = field(default_factory=dict)  # request index → exact answer
    resets: int = 0
    spans: dict[int, tuple[float, float]] = field(default_factory=dict)  # index → (start, end)
    url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._blocks: set[tuple[str, ...]] = set()

    def start(self) -> WorkloadServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        if self.tokenize:
            app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/reset_prefix_cache", self._reset)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> WorkloadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "owned_by": "test"}]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = count_words(str(body.get("prompt", "")))
        return web.json_response({"count": n, "tokens": list(range(n))})

    async def _reset(self, request: web.Request) -> web.Response:
        self.resets += 1
        self._blocks.clear()
        return web.json_response({"success": True})

    def _cached(self, tokens: list[str]) -> int:
        """Leading full blocks seen before (then remember this prompt's blocks)."""
        hit = 0
        keys = [tuple(tokens[: (i + 1) * BLOCK]) for i in range(len(tokens) // BLOCK)]
        for key in keys:
            if key not in self._blocks:
                break
            hit += BLOCK
        self._blocks.update(keys)
        return hit

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        index = len(self.requests)
        self.requests.append(body)
        start = time.monotonic()
        chat = request.path.endswith("chat/completions")
        n = int(body.get("max_tokens", 16))
        tokens = prompt_tokens_of(body)
        p_tokens = len(tokens)
        cached = self._cached(tokens)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def usage(done: int) -> dict[str, int]:
            return {"prompt_tokens": p_tokens, "total_tokens": p_tokens + done,
                    "completion_tokens": done}  # fmt: skip

        async def send(obj: Any) -> None:
            wire = json.dumps(obj, separators=(",", ":"))  # compact, as vLLM's pydantic dumps
            await resp.write(b"data: " + wire.encode() + b"\n\n")

        if chat:
            await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                        "usage": usage(0)})  # fmt: skip
        answer: list[str] = []
        thinking = self.reasoning_tokens if self.reasoning and chat else 0
        for done in range(1, n + 1):
            await asyncio.sleep(self.token_delay_s)
            piece = PIECES[(index + done) % len(PIECES)]
            if done <= thinking:
                delta: dict[str, Any] = {self.reasoning: piece}  # type: ignore[dict-item]
            else:
                answer.append(piece)
                delta = {"content": piece}
            choice: dict[str, Any] = {"index": 0, "delta": delta} if chat else {
                "index": 0, "text": piece}  # fmt: skip
            choice["finish_reason"] = "length" if done == n else None
            await send({"id": "c", "choices": [choice], "usage": usage(done)})
        self.answers[index] = "".join(answer)
        self.spans[index] = (start, time.monotonic())
        final = usage(n)
        if cached:
            final["prompt_tokens_details"] = {"cached_tokens": cached}  # type: ignore[assignment]
        await send({"id": "c", "choices": [], "usage": final})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
