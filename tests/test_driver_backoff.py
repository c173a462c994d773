"""Closed loop against a dead server: connect failures back off instead of spinning.

Each connect failure used to start the slot's next request at once: against a port with
nothing listening that is a busy loop (100 % CPU) and a flood of `connect` records. Now a
slot waits 10 ms, doubling per consecutive failure, up to 1 s; any answer resets it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from llmtop.config import LoadPlan, RunConfig, Target, Workload
from llmtop.load import channel as ch
from llmtop.load.driver import CONNECT_BACKOFF_MAX_S, LoadDriver, connect_backoff_s
from llmtop.metrics import records
from tests.support.scripted_server import Script, ScriptedServer


def test_backoff_doubles_to_its_cap() -> None:
    waits = [connect_backoff_s(n) for n in range(0, 12)]
    assert waits[0] == 0.0 and waits[1] == 0.01 and waits[2] == 0.02
    assert waits == sorted(waits)
    assert waits[-1] == CONNECT_BACKOFF_MAX_S == connect_backoff_s(10**6)


def _dead_port() -> int:
    """A port on loopback where nothing listens (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _run_closed_loop(url: str, concurrency: int, seconds: float) -> tuple[list[Any], float]:
    """A closed-loop LoadDriver for `seconds`; (every record it shipped, its CPU seconds)."""
    config = RunConfig(
        Target(url, model="scripted"),
        Workload(input_len=8, output_len=4),
        LoadPlan(concurrency=concurrency, duration_s=seconds),
    )
    shipped: list[Any] = []

    async def main() -> None:
        driver = LoadDriver(config, asyncio.get_running_loop(), shipped.append)
        driver.start()
        await asyncio.wait_for(driver.finished, seconds + 5)

    cpu = time.process_time()
    asyncio.run(main())
    cpu = time.process_time() - cpu
    recs = [r for m in shipped if isinstance(m, ch.RecordsShipped) for r in m.records]
    return recs, cpu


def test_a_dead_server_costs_a_few_attempts_per_slot_per_second() -> None:
    recs, cpu_s = _run_closed_loop(f"http://127.0.0.1:{_dead_port()}", 8, 3.0)
    assert recs and all(r.error == records.CONNECT for r in recs)
    # 10+20+...+640 ms, then 1 s per try: about 8 + 3 tries per slot in 3 s (no backoff:
    # tens of thousands of records and a core at 100 %).
    assert len(recs) <= 8 * 12, len(recs)
    assert cpu_s < 1.0, cpu_s


def test_an_answer_resets_the_backoff() -> None:
    """The server comes up after a while: once a request is answered, full speed again."""
    port = _dead_port()
    server = ScriptedServer(Script(ttft_ms=5, itl_ms=2), port=port)
    threading.Timer(0.3, server.start_in_thread).start()
    try:
        recs, _ = _run_closed_loop(f"http://127.0.0.1:{port}", 2, 2.5)
    finally:
        time.sleep(0.1)
        server.stop_thread()
    failed = [r for r in recs if r.error is not None]
    ok = [r for r in recs if r.error is None]
    assert failed and all(r.error == records.CONNECT for r in failed)
    assert len(failed) <= 2 * 10
    # ~2 s up, a request is ~15 ms: with the backoff still on it would be 2 per second
    assert len(ok) >= 100, len(ok)
