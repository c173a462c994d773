"""Server processes llmtop starts (an engine, the simulator) never outlive it.

Each runs in a session and process group of its own, so the terminal's Ctrl-C and a
signal to llmtop's group reach llmtop only: llmtop decides when and how its children stop.
That group is then llmtop's to clean up on every path, a `kill -9` of llmtop included, which
no handler in llmtop can catch. So each group gets a `Watchdog`: a tiny separate process
(its own session, terminal and group signals ignored) that blocks reading a pipe whose
other end only llmtop holds. The kernel closes that end however llmtop ends; the watchdog
then sends the group SIGTERM, waits the grace period, and SIGKILLs what is left (an
engine's workers included, which a parent-death signal on the engine alone would miss).
When llmtop stops the group itself, it closes the pipe after the group is gone and the
watchdog finds nothing to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

_WATCHDOG = r"""
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
try:
    while os.read(0, 4096):
        pass
except OSError:
    pass
def alive():
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
if alive():
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        pass
    end = time.monotonic() + grace
    while time.monotonic() < end and alive():
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class Watchdog:
    """Stops process group `pgid` (SIGTERM, `grace_s`, SIGKILL) once llmtop is gone."""

    def __init__(self, pgid: int, grace_s: float) -> None:
        self.pgid = pgid
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pgid), f"{grace_s:g}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outside llmtop's group: `kill -9 -- -PGID` spares it
            close_fds=True,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self, timeout_s: float = 2.0) -> None:
        """llmtop has stopped the group itself: let the watchdog go (and reap it)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:  # it is still stopping a stubborn group: leave it
            pass


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` exists (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace_s: float) -> int | None:
    """SIGTERM the child's whole group, SIGKILL what is left after `grace_s`; reap the child.

    Survives Ctrl-C while it waits: an interrupt only skips the rest of the grace period, it
    never leaves the group running; it is raised again once the group is gone, so a stop
    between two sweep points does not swallow the user's "stop everything". Returns the
    child's exit code.
    """
    pgid = proc.pid
    asked: KeyboardInterrupt | None = None
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt as exc:
        asked = exc  # go straight to SIGKILL
    finally:
        # Workers may outlive the main process: whatever is left of the group goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            except KeyboardInterrupt as exc:
                asked = asked or exc
    if asked is not None:
        raise asked
    return proc.returncode
