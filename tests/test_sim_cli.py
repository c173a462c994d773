"""`llmtop sim` bad input (one line, exit 2, no traceback) and the launcher's lifecycle."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

import pytest

from llmtop.sim.launcher import SimStartError, start_sim


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtop.sim", *args], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--gpu", "v100"], "valid: a100-80g, h100-sxm, h200, l40s"),
        (["--model", "gpt-5"], "valid: llama-3-70b, llama-3-8b"),
        (["--engine", "sglang"], "valid: vllm, trtllm"),
        (["--model", "llama-3-70b"], "does not fit"),
        (["--gpu-memory-utilization", "0.2"], "does not fit"),
        (["--gpu-memory-utilization", "1.5"], "valid: (0, 1]"),
        (["--port", "70000"], "valid: 0 (any free port) or 1-65535"),
        (["--tp", "3"], "valid: 1, 2, 4, 8"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], expect: str) -> None:
    p = _sim(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmtop sim: "), p.stderr
    assert expect in lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = _sim("--port", str(port))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "in use" in p.stderr
    assert "Traceback" not in p.stderr


def test_launcher_starts_describes_and_stops() -> None:
    with start_sim(engine="trtllm", gpu="h100-sxm", extra_args=["--max-num-seqs", "64"]) as h:
        d = h.describe()
        assert d["simulated"] is True and d["engine"] == "trtllm"
        assert d["gpu"] == "h100-sxm" and d["model"] == "llama-3-8b" and d["tp"] == 1
        assert d["max_num_seqs"] == 64 and d["url"] == h.url
        with urllib.request.urlopen(h.url + "/version", timeout=5) as r:
            assert json.loads(r.read())["simulated"] is True
        proc = h.proc
    assert proc.returncode is not None  # reaped
    assert not h.running


def test_launcher_failure_carries_the_childs_message() -> None:
    with pytest.raises(SimStartError, match="unknown gpu 'v100'; valid: a100-80g"):
        start_sim(gpu="v100")


def test_launched_server_streams_in_real_time() -> None:
    body = {
        "model": "llama-3.2-1b",
        "prompt": [1] * 32,
        "max_tokens": 8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with start_sim(model="llama-3.2-1b", gpu="h100-sxm") as h:
        req = urllib.request.Request(
            h.url + "/v1/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["x-llmtop-sim"] == "1"
            events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][len("data: ") :])["usage"]["completion_tokens"] == 8
    assert len(events) == 8 + 2


def test_help_lists_presets() -> None:
    p = _sim("--help")
    assert p.returncode == 0
    assert "a100-80g" in p.stdout and "llama-3-70b" in p.stdout and "--time-scale" not in p.stdout
