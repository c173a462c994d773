"""`llmtop run` end to end against a real aiohttp server on loopback, bad input included."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.support.fault_server import Behaviour, FaultServer

FAST = ["--input-len", "16", "--output-len", "8"]


def test_happy_path_exact_tokens_and_json_shape(fault_server: FaultServer, tmp_path: Path) -> None:
    r = run_cli(
        "run",
        "--url",
        fault_server.url,
        "--num-requests",
        "30",
        "--request-rate",
        "50",
        *FAST,
        json_path=tmp_path / "out.json",
    )
    assert r.returncode == 0, r.stderr
    d = r.data
    assert d["completed"] == 30 and d["failed"] == 0 and d["errors"] == {}
    assert d["output_tokens"] == 30 * 8 and d["input_tokens"] == 30 * 16
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2el_ms", "send_slip_ms"):
        assert set(d[key]) >= {"p50", "p90", "p99", "p99.9", "mean", "max"}, key
    assert d["ttft_ms"]["p50"] >= 5.0  # the server waits 5 ms before the first token
    assert d["itl_ms"]["count"] == 30 * 7
    assert d["request_throughput"] > 0 and d["output_throughput"] > 0 and d["duration_s"] > 0
    assert d["config"]["plan"]["request_rate"] == 50.0
    assert d["target"]["model"] == "test-model"
    assert "TTFT" in r.stdout and "TPOT" in r.stdout
    # what the server got: token-id prompts with a unique start, usage on every chunk
    bodies = fault_server.requests[1:]
    assert all(isinstance(b["prompt"], list) and len(b["prompt"]) == 16 for b in bodies)
    assert len({tuple(b["prompt"][:4]) for b in bodies}) == len(bodies)
    assert bodies[0]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert bodies[0]["ignore_eos"] is True and bodies[0]["max_tokens"] == 8


def test_chat_api_counts_from_the_first_content_chunk(tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour(ttft_s=0.03)) as srv:
        r = run_cli(
            "run",
            "--url",
            srv.url,
            "--api",
            "chat",
            "--num-requests",
            "5",
            *FAST,
            json_path=tmp_path / "o.json",
        )
        assert r.returncode == 0, r.stderr
        assert r.data["completed"] == 5 and r.data["output_tokens"] == 40
        assert r.data["ttft_ms"]["p50"] >= 30.0  # not the instant role-only chunk
        assert "messages" in srv.requests[-1]


def test_multi_token_chunks_split_into_per_token_itl(tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour(tokens_per_chunk=4, itl_s=0.02)) as srv:
        r = run_cli(
            "run",
            "--url",
            srv.url,
            "--num-requests",
            "4",
            "--input-len",
            "8",
            "--output-len",
            "16",
            json_path=tmp_path / "o.json",
        )
    d = r.data
    assert d["output_tokens"] == 64
    assert d["itl_ms"]["count"] == 4 * 12  # 3 gaps × 4 tokens each, per request
    assert 4.0 <= d["itl_ms"]["p50"] <= 6.5  # 20 ms / 4 tokens, not 20 ms


def test_strict_server_gets_only_fields_it_accepts(tmp_path: Path) -> None:
    """Like trtllm-serve (`extra="forbid"`): unknown fields are a 400, so we drop them."""
    allowed = frozenset({"model", "prompt", "max_tokens", "stream", "stream_options"})
    with FaultServer(strict_fields=allowed) as srv:
        r = run_cli(
            "run", "--url", srv.url, "--num-requests", "3", *FAST, json_path=tmp_path / "o.json"
        )
        assert r.returncode == 0, r.stderr
        assert "ignore_eos" in r.stderr  # said what it dropped
        assert r.data["completed"] == 3
        assert "ignore_eos" not in srv.requests[-1]


def test_http_errors_are_counted_by_status(tmp_path: Path) -> None:
    def plan(i: int, body: dict) -> Behaviour:
        if i == 0:
            return Behaviour()  # the preflight probe
        return [Behaviour(), Behaviour("status", 429), Behaviour("status", 500)][i % 3]

    with FaultServer(plan=plan) as srv:
        r = run_cli(
            "run",
            "--url",
            srv.url,
            "--num-requests",
            "30",
            "--request-rate",
            "100",
            *FAST,
            json_path=tmp_path / "o.json",
        )
    assert r.returncode == 0, r.stderr
    d = r.data
    assert d["completed"] + d["failed"] == 30
    assert d["errors"]["http_429"] >= 5 and d["errors"]["http_500"] >= 5
    assert "scripted 429" in d["error_examples"]["http_429"]
    assert "http_429" in r.stdout


@pytest.mark.parametrize(
    ("behaviour", "kind"),
    [
        (Behaviour("cut", after_tokens=3), "stream_cut"),
        (Behaviour("malformed", after_tokens=2), "malformed_event"),
        (Behaviour("error_event", after_tokens=1), "stream_error"),
    ],
)
def test_broken_streams(behaviour: Behaviour, kind: str, tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour() if i == 0 else behaviour) as srv:
        r = run_cli(
            "run", "--url", srv.url, "--num-requests", "4", *FAST, json_path=tmp_path / "o.json"
        )
    assert_one_line_error(r, "every request failed", kind)
    d = r.data  # the results are still written
    assert d["failed"] == 4 and d["errors"] == {kind: 4}


def test_silent_server_times_out(tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour() if i == 0 else Behaviour("hang")) as srv:
        r = run_cli(
            "run",
            "--url",
            srv.url,
            "--num-requests",
            "2",
            "--read-timeout",
            "1",
            *FAST,
            json_path=tmp_path / "o.json",
        )
    assert_one_line_error(r, "timeout")
    assert r.data["errors"] == {"timeout": 2}


def test_unreachable_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("run", "--url", f"http://127.0.0.1:{port}", "--num-requests", "1")
    assert_one_line_error(r, "cannot connect", str(port))


def test_wrong_model_lists_what_is_served(fault_server: FaultServer) -> None:
    r = run_cli("run", "--url", fault_server.url, "--model", "nope", "--num-requests", "1")
    assert_one_line_error(r, "'nope'", "test-model")


def test_api_key_from_env_is_sent_and_never_written(tmp_path: Path) -> None:
    with FaultServer(require_key="s3cret-key") as srv:
        bad = run_cli("run", "--url", srv.url, "--num-requests", "1")
        assert_one_line_error(bad, "401", "api-key")
        ok = run_cli(
            "run",
            "--url",
            srv.url,
            "--num-requests",
            "2",
            *FAST,
            json_path=tmp_path / "o.json",
            env={"OPENAI_API_KEY": "s3cret-key"},
        )
        assert ok.returncode == 0, ok.stderr
        assert srv.headers_seen[-1]["Authorization"] == "Bearer s3cret-key"
    text = (tmp_path / "o.json").read_text() + ok.stdout + ok.stderr
    assert "s3cret" not in text


def test_extra_headers_are_sent(fault_server: FaultServer, tmp_path: Path) -> None:
    r = run_cli(
        "run",
        "--url",
        fault_server.url,
        "--num-requests",
        "1",
        "--header",
        "X-Tenant: blue",
        *FAST,
        json_path=tmp_path / "o.json",
    )
    assert r.returncode == 0, r.stderr
    assert fault_server.headers_seen[-1]["X-Tenant"] == "blue"
    assert "blue" not in (tmp_path / "o.json").read_text()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--request-rate", "-3"], "rate must be > 0"),
        (["--request-rate", "fast"], "not a rate"),
        (["--duration", "0"], "--duration must be > 0"),
        (["--num-requests", "0"], "--num-requests must be >= 1"),
        (["--duration", "5", "--num-requests", "5"], "not both"),
        (["--request-rate", "inf", "--duration", "5"], "give --num-requests"),
        (["--header", "nocolon"], "bad --header"),
        (["--url", "ftp://x"], "bad --url"),
        (["--burstiness", "0"], "--burstiness must be > 0"),
    ],
)
def test_nonsense_flags(args: list[str], needle: str) -> None:
    base = ["run", "--url", "http://127.0.0.1:9"] if "--url" not in args else ["run"]
    r = run_cli(*base, *args)
    assert_one_line_error(r, needle)
    assert r.returncode == 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_results(sig: int, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    with FaultServer(plan=lambda i, b: Behaviour(itl_s=0.01)) as srv:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmtop",
                "run",
                "--url",
                srv.url,
                "--duration",
                "60",
                "--request-rate",
                "20",
                "--input-len",
                "8",
                "--output-len",
                "50",
                "--json",
                str(out),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3.0)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    d = json.loads(out.read_text())
    assert d["interrupted"] is True
    assert d["completed"] >= 10
    assert d["failed"] == 0  # in-flight requests were cancelled, not failed
    assert d["cancelled"] >= 1
    assert "TTFT" in stdout


def test_max_concurrency_wait_is_reported(tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour(ttft_s=0.05, itl_s=0.01)) as srv:
        r = run_cli(
            "run",
            "--url",
            srv.url,
            "--num-requests",
            "20",
            "--request-rate",
            "inf",
            "--max-concurrency",
            "2",
            *FAST,
            json_path=tmp_path / "o.json",
        )
    d = r.data
    assert d["completed"] == 20
    # 20 requests, 2 at a time, ~120 ms each: the last waits ~1 s for a slot
    assert d["queue_wait_ms"]["max"] >= 800
    assert d["send_slip_ms"]["max"] >= 800  # slip includes the wait; never hidden
    assert d["ttft_ms"]["max"] < 200  # from the actual send
    assert d["ttft_from_intended_ms"]["max"] >= 800


def test_closed_loop_concurrency(tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour(ttft_s=0.02, itl_s=0.005)) as srv:
        r = run_cli(
            "run",
            "--url",
            srv.url,
            "--concurrency",
            "3",
            "--num-requests",
            "15",
            *FAST,
            json_path=tmp_path / "o.json",
        )
    assert r.returncode == 0, r.stderr
    d = r.data
    assert d["completed"] == 15
    assert d["config"]["plan"]["concurrency"] == 3
    assert d["queue_wait_ms"]["max"] < 5
