"""The load process: a spawned child running the load loop on its own event loop.

Rendering a terminal UI holds the GIL for milliseconds at a time; any token timestamp taken
in that window would be late. So the loop that sends and timestamps lives in its own OS
process (spawned, so it inherits no threads or UI state), on uvloop when installed.

The load process answers to its parent only. Terminal and group signals (Ctrl-C, a SIGTERM
to the process group from `timeout`, systemd or a CI runner, SIGHUP from a lost SSH
session) are ignored from the moment it exists (blocked across the spawn, then ignored), so
the parent can stop it cleanly and keep what was in flight. It dies with its parent: a
parent-death signal on Linux (SIGKILL once the parent is gone), and everywhere the end of
the channel, which the kernel closes however the parent ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any

from llmtop.config import RunConfig
from llmtop.load import channel as ch

# Signals meant for the group (terminal, `timeout`, systemd, CI runners), not for us.
GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel for SIGKILL when the parent goes (Linux); exit now if it already went.

    Returns whether the kernel took the request. The request is tied to the parent *thread*
    that spawned us: `LoadProcess.start()` is called from the thread that owns the session.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)
    return armed


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
    lost = False

    def on_message(msg: Any) -> None:
        if hook is not None and hook.on_control(msg):
            return  # a worker of a group: barrier, timed controls (llmtop.load.hook)
        if driver is not None:
            driver.on_control(msg)

    def on_lost() -> None:  # the parent is gone: nobody will read our results; stop now
        nonlocal lost
        lost = True
        if driver is not None:
            driver.request_stop("parent went away", cancel_in_flight=True)

    transport, chan = await loop.create_unix_connection(
        lambda: ch.ChildChannel(on_message, on_lost), sock=sock
    )
    await asyncio.sleep(0)  # a channel already closed is seen before any request is sent
    if lost:
        transport.close()
        return
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
    for sig in GROUP_SIGNALS:  # the parent decides when we stop
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)  # blocked across the spawn
    if parent_pid is not None:
        die_with_parent(parent_pid)
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
        """Spawn the child with the group signals blocked, so none reaches it while it boots.

        The mask is inherited across fork and exec; the child ignores those signals and then
        unblocks them. Here they stay pending for the few milliseconds of the spawn, and are
        delivered (not lost) when the mask is restored.
        """
        ctx = multiprocessing.get_context("spawn")
        parent_sock, child_sock = socket.socketpair()
        self.proc = ctx.Process(
            target=child_main,
            args=(child_sock, self.config, os.getpid(), self.hook),
            name="llmtop-load",
            daemon=True,
        )
        blocked = threading.current_thread() is threading.main_thread()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS) if blocked else None
        try:
            self.proc.start()
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
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

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode if self.proc is not None else None

    def death(self) -> dict[str, Any]:
        """How the child ended, for the one-line error and the `"failure"` field."""
        code = self.exitcode
        if code is None:
            return {"message": "the load process ended unexpectedly", "exit_code": None}
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return {
                "message": f"the load process was killed by {name}",
                "exit_code": code,
                "signal": name,
            }
        return {"message": f"the load process exited with code {code}", "exit_code": code}

    def set_rate(self, rate: float) -> None:
        self.send(ch.RateSet(rate))

    def stop(self, cancel_in_flight: bool = True) -> None:
        self.send(ch.StopRequested(cancel_in_flight))

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the child to end; kill it if it will not (it ignores SIGTERM by design)."""
        if self.proc is None:
            return
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.join(5.0)
        if self.channel is not None:
            self.channel.close()
