"""Shared fixtures: real servers on loopback and a way to run the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fault_server import FaultServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str], json_path: Path | None) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.json_path = json_path

    @property
    def data(self) -> dict[str, Any]:
        assert self.json_path is not None
        return json.loads(self.json_path.read_text())


def run_cli(
    *args: str,
    json_path: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> CliResult:
    cmd = [sys.executable, "-m", "llmtop", *args]
    if json_path is not None:
        cmd += ["--json", str(json_path)]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("OPENAI_API_KEY", None) if env is None or "OPENAI_API_KEY" not in env else None
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env
    )
    return CliResult(proc, json_path)


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """A clean failure: non-zero exit, no traceback, the message says what went wrong."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error message"
    for needle in needles:
        assert needle.lower() in result.stderr.lower(), result.stderr
