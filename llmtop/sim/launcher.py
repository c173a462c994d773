"""Start the simulator in a child process and wait until it is healthy.

`llmtop` without `--url` uses this: the server runs as `python -m llmtop.sim --port 0` so
it never shares an interpreter (or a GIL) with the load generator or the UI. The child
prints one JSON line with its URL and settings; we read it, poll `/health`, and hand back a
`SimHandle`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any

from llmtop.engines.children import Watchdog, stop_group
from llmtop.engines.http import healthy
from llmtop.errors import TargetError


class SimStartError(TargetError):
    """The simulator did not come up; the message carries the tail of its stderr."""


class SimHandle:
    """A running simulator child process: `url`, `describe()`, `stop()`; a context manager."""

    def __init__(
        self, proc: subprocess.Popen[str], url: str, info: dict[str, Any], stderr_file: IO[str]
    ) -> None:
        self.proc = proc
        self.url = url
        self._info = info
        self._stderr = stderr_file
        # its own group (Ctrl-C and group signals reach llmtop, which stops it), and a
        # watchdog that stops it if llmtop is killed (llmtop.engines.children)
        self._watchdog: Watchdog | None = Watchdog(proc.pid, 5.0)

    def describe(self) -> dict[str, Any]:
        """Engine, presets and effective settings; always `"simulated": True`."""
        d = {k: v for k, v in self._info.items() if k != "url"}
        d["simulated"] = True
        d["url"] = self.url
        return d

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate and reap the child (SIGTERM, then SIGKILL after `timeout`)."""
        stop_group(self.proc, timeout)
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(OSError):
            self._stderr.close()

    def __enter__(self) -> SimHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(f: IO[str], n: int = 2000) -> str:
    with contextlib.suppress(OSError, ValueError):
        f.flush()
        f.seek(0)
        return f.read()[-n:].strip()
    return ""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    """First stdout line of the child, or None if it exits or takes too long."""
    out: list[str] = []

    def reader() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.readline())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out and out[0] else None


def start_sim(
    engine: str = "vllm",
    gpu: str = "a100-80g",
    model: str = "llama-3-8b",
    tp: int = 1,
    extra_args: Sequence[str] = (),
    timeout: float = 20.0,
    host: str = "127.0.0.1",
) -> SimHandle:
    """Start `python -m llmtop.sim` on a free loopback port and wait for `/health`."""
    cmd = [
        sys.executable,
        "-m",
        "llmtop.sim",
        "--engine",
        engine,
        "--gpu",
        gpu,
        "--model",
        model,
        "--tp",
        str(tp),
        "--host",
        host,
        "--port",
        "0",
        *extra_args,
    ]
    # Owned by the SimHandle (closed in stop()), so no `with` block here.
    stderr_file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout

    def fail(why: str) -> SimStartError:
        stop_group(proc, 0.0)
        tail = _tail(stderr_file)
        with contextlib.suppress(OSError):
            stderr_file.close()
        return SimStartError(f"simulator did not start: {why}" + (f": {tail}" if tail else ""))

    try:
        return _wait_ready(proc, stderr_file, timeout, deadline, fail)
    except BaseException:  # Ctrl-C (or a signal made KeyboardInterrupt) while it starts
        stop_group(proc, 0.0)
        raise


def _wait_ready(
    proc: subprocess.Popen[str], stderr_file: IO[str], timeout: float, deadline: float, fail: Any
) -> SimHandle:
    line = _read_line(proc, timeout)
    if line is None:
        raise fail("it exited" if proc.poll() is not None else f"no URL within {timeout:g} s")
    try:
        info = json.loads(line)
        url = str(info["url"])
    except (ValueError, KeyError, TypeError):
        raise fail(f"unexpected first line {line.strip()[:200]!r}") from None
    while not healthy(url + "/health", timeout_s=1.0):
        if proc.poll() is not None:
            raise fail("it exited")
        if time.monotonic() > deadline:
            raise fail(f"/health not ready within {timeout:g} s")
        time.sleep(0.05)
    return SimHandle(proc, url, info, stderr_file)
