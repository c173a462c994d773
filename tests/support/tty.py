"""Run the real CLI with a terminal on stdin/stdout/stderr (a pseudo-terminal), for the UI's
checks that need one, and read everything it wrote."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def run_cli_tty(
    *args: str,
    timeout: float = 60.0,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    entry: tuple[str, ...] = ("-m", "llmtop"),
) -> tuple[int, str]:
    """(exit code, everything written to the terminal) of `python -m llmtop ARGS` on a pty
    (or of `python ENTRY ARGS`, e.g. `("-c", code)`)."""
    main, child = pty.openpty()
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env = {**env, "TERM": env.get("TERM") or "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, *entry, *args],
        stdin=child,
        stdout=child,
        stderr=child,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(child)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        code = proc.wait(timeout=10)
    finally:
        os.close(main)
    return code, out.decode("utf-8", "replace")
