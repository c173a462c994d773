"""The load process: a spawned child running the load loop on its own event loop.

Rendering a terminal UI holds the GIL for milliseconds at a time; any token timestamp taken
in that window would be late. So the loop that sends and timestamps lives in its own OS
process (spawned, so it inherits no threads or UI state), on uvloop when installed.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
import socket
import traceback
from typing import Any

from llmtop.config import RunConfig
from llmtop.load import channel as ch


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _amain(sock: socket.socket, config: RunConfig, hook: Any = None) -> None:
    from llmtop.load.driver import LoadDriver

    loop = asyncio.get_running_loop()
    driver: LoadDriver | None = None

    def on_message(msg: Any) -> None:
        if hook is not None and hook.on_control(msg):
            return  # a worker of a group: barrier, timed controls (llmtop.load.hook)
        if driver is not None:
            driver.on_control(msg)

    def on_lost() -> None:  # the parent is gone: nobody will read our results; stop now
        if driver is not None:
            driver.request_stop("parent went away", cancel_in_flight=True)

    transport, chan = await loop.create_unix_connection(
        lambda: ch.ChildChannel(on_message, on_lost), sock=sock
    )
    try:
        driver = LoadDriver(config, loop, chan.send)
        if hook is not None:
            hook.attach(driver, loop, chan.send)
    except Exception as exc:
        chan.send(ch.LoadFailed(f"{type(exc).__name__}: {exc}"))
        transport.close()
        return
    # The collector's automatic passes stall the loop for milliseconds at unpredictable
    # moments (measured: ITL p99 error 0.7 ms with them, 0.47 ms without, at 196 req/s).
    # Freeze what start-up made, switch automatic collection off, and let the driver collect
    # on its own schedule (every few seconds, between reads; see LoadDriver._collect).
    gc.collect()
    gc.freeze()
    gc.disable()
    if hook is not None:
        hook.begin(driver)  # at once, or at the group's start barrier
    else:
        driver.start()
    try:
        await driver.finished
    except asyncio.CancelledError:
        pass
    transport.close()
    for _ in range(200):  # let the last records drain to the parent
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.01)


def child_main(
    sock: socket.socket, config: RunConfig, parent_pid: int | None = None, hook: Any = None
) -> None:
    """Entry point of the load process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_amain(sock, config, hook))
    except Exception as exc:  # last resort: tell the parent rather than print a traceback
        try:
            sock.sendall(ch.encode(ch.LoadFailed(f"load process crashed: {exc!r}")))
            sock.sendall(ch.encode(ch.LoadFailed(traceback.format_exc(limit=5))))
        except OSError:
            pass
    finally:
        loop.close()


def yield_to_load_process() -> str:
    """Put every thread of this (parent) process on SCHED_IDLE, below the load process.

    On Linux a SCHED_IDLE task is preempted at once by any normal task that wakes up, so when
    the collector or the UI shares a core with the load process, a token arriving wakes the
    load process immediately instead of after the parent's time slice (measured: ITL p99 off
    by 1–3 ms at 196 req/s with the parent on the same core at normal priority, even at nice
    19). The parent only needs idle time: it reads what the load process already stamped.
    Returns what was done, for the run's notes. LLMTOP_PARENT_PRIORITY=normal turns it off.
    """
    if os.environ.get("LLMTOP_PARENT_PRIORITY", "idle") != "idle":
        return "parent at normal priority (LLMTOP_PARENT_PRIORITY)"
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return "parent priority unchanged (no SCHED_IDLE here)"
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    done = 0
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            done += 1
        except OSError:
            pass
    return "parent on SCHED_IDLE" if done else "parent priority unchanged"


class LoadProcess:
    """The parent's handle on the load process: control out, messages in."""

    def __init__(self, config: RunConfig, hook: Any = None) -> None:
        self.config = config
        self.hook = hook  # llmtop.load.hook.WorkerHook for a worker of a group
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.channel: ch.ParentChannel | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent_sock, child_sock = socket.socketpair()
        self.proc = ctx.Process(
            target=child_main,
            args=(child_sock, self.config, None, self.hook),
            name="llmtop-load",
            daemon=True,
        )
        self.proc.start()
        child_sock.close()
        self.channel = ch.ParentChannel(parent_sock)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def send(self, msg: Any) -> None:
        if self.channel is not None:
            self.channel.send(msg)

    def receive(self, timeout_s: float) -> list[Any]:
        return self.channel.receive(timeout_s) if self.channel else []

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def set_rate(self, rate: float) -> None:
        self.send(ch.RateSet(rate))

    def stop(self, cancel_in_flight: bool = True) -> None:
        self.send(ch.StopRequested(cancel_in_flight))

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the child to end; kill it if it will not."""
        if self.proc is None:
            return
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2.0)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        if self.channel is not None:
            self.channel.close()
