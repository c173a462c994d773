"""Escape sequences from the server never reach the terminal through the UI (issue 12): a
real aiohttp server whose model id, error bodies and stream errors carry terminal controls,
the real load process against it, and the exact text the app would write to the terminal."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from llmtop.cli.options import prepared
from llmtop.session import LoadSession
from llmtop.tui.app import LlmtopApp, create_app
from llmtop.tui.messages import LoadStopped
from llmtop.tui.model import RunInfo
from llmtop.tui.worker import SessionDriver
from tests.test_tui import SLO, options, wait_for

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
WIPE = "\x1b[2J"  # clears the screen
MODEL = f"evil{TITLE}-model{WIPE}"


class EvilServer:
    """OpenAI-compatible, on loopback: a hostile model id; every 3rd request an HTTP 500
    whose body is escape sequences, every 3rd a stream that ends in an error event."""

    def __init__(self) -> None:
        self.n = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> EvilServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.n += 1
        if self.n > 1 and self.n % 3 == 0:
            body = {"error": {"message": f"{TITLE}{WIPE}boom", "type": f"{WIPE}x"}}
            return web.json_response(body, status=500, reason="Evil")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(obj: dict[str, Any]) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        for i in range(4):
            await event({"model": MODEL, "choices": [{"index": 0, "text": f"{WIPE}t{i}"}]})
            await asyncio.sleep(0.002)
        if self.n > 1 and self.n % 3 == 1:
            await event({"error": {"message": f"mid-stream {TITLE}{WIPE}", "code": 500}})
        else:
            usage = {"prompt_tokens": 16, "completion_tokens": 4, "total_tokens": 20}
            await event({"model": MODEL, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
def evil() -> Iterator[EvilServer]:
    server = EvilServer().start()
    yield server
    server.stop()


def terminal_text(app: LlmtopApp) -> str:
    """What the app would write to the terminal for its whole screen, escape codes and all."""
    return app.screen._compositor.render_full_update().render_segments(app.console)


def assert_clean(out: str) -> None:
    assert "pwned" not in out  # the whole OSC sequence is gone, not just its ESC
    assert WIPE not in out and "\x1b]0;" not in out and "\x07" not in out


def test_server_strings_reach_the_screen_without_their_escape_sequences(
    evil: EvilServer,
) -> None:
    screens: list[str] = []
    with prepared(options(evil.url, request_rate=12.0, output_len=4)) as prep:
        assert prep.extra["target"]["model"] == MODEL  # the hostile id, as the server gave it
        info = RunInfo.from_extra(prep.extra, prep.config.plan, SLO, rate_step=0.1)
        driver = SessionDriver(lambda: LoadSession(prep.config, SLO, interval_s=0.1), {})
        driver.start()
        app = create_app(info, driver)

        async def scenario() -> None:
            async with app.run_test(size=(200, 40)) as pilot:

                def errors() -> set[str]:
                    return set(app.telemetry.errors) if app.telemetry else set()

                await wait_for(pilot, lambda: "http_500" in errors() and len(errors()) >= 2)
                await wait_for(pilot, lambda: sum("errors:" in t for t in app.events) >= 2)
                screens.append(terminal_text(app))
                # a load failure carrying the server's words: the log and the notification
                app.post_message(LoadStopped("failed", f"server said {TITLE}{WIPE}no"))
                await wait_for(pilot, lambda: any("server said" in t for t in app.events))
                await pilot.pause(0.2)
                screens.append(terminal_text(app))
                await pilot.press("q")
                await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

        asyncio.run(scenario())
    for out in screens:
        assert_clean(out)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screens[-1])
    assert "evil-model" in plain  # the model id is shown, defused
    assert "server said no" in plain  # and so is the failure
    assert all("pwned" not in t and "\x1b" not in t for t in app.events)
