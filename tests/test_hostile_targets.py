"""Hostile targets never get the key out of llmtop (issue 12's key-scrubbing bar).

Each server here misbehaves on purpose on a real loopback socket (tests/support/
hostile_server.py): a redirect loop, a malformed status line, a 256 KB header, a redirect to
another listener. `llmtop run` against each must end with one line on stderr and a non-zero
exit, and the key and header value must appear in no output, in no file, and in no request
that the other listener receives. The side requests (engine detection, the /metrics poller)
are held to the same rules, plus the body cap and the deadline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from llmtop.engines.detect import UNKNOWN, detect_engine
from llmtop.engines.http import SideRequestError, request
from llmtop.engines.poller import MetricsPoller
from tests.conftest import run_cli
from tests.support.hostile_server import ESCAPE, HostileServer, RecordingServer

KEY = "sk-test-K3yTh4tMustNeverLeak"
HEADER_VALUE = "hdr-S3cretValue-0042"
HEADERS = {"Authorization": f"Bearer {KEY}", "X-Api-Token": HEADER_VALUE}
MODES = ("redirect_loop", "bad_status", "huge_header", "redirect_to")


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("key_from", ["flag", "env"])
def test_run_against_a_hostile_target_leaks_no_key(
    mode: str, key_from: str, tmp_path: Path
) -> None:
    with RecordingServer() as other, HostileServer(mode=mode, target=other.url) as bad:
        args = [
            "run",
            "--url",
            bad.url,
            "--header",
            f"X-Api-Token: {HEADER_VALUE}",
            "--num-requests",
            "3",
            "--save",
            str(tmp_path / "snap.json"),
            "--save-requests",
            str(tmp_path / "requests.jsonl"),
            "--no-progress",
        ]
        env = {"OPENAI_API_KEY": KEY} if key_from == "env" else None
        if key_from == "flag":
            args += ["--api-key", KEY]
        t0 = time.monotonic()
        r = run_cli(*args, json_path=tmp_path / "out.json", env=env, timeout=90)
        took = time.monotonic() - t0
        other_saw = list(other.received)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmtop: "), r.stderr
    for secret in (KEY, HEADER_VALUE):
        assert secret not in r.stdout and secret not in r.stderr
        for path in _files_under(tmp_path):
            assert secret.encode() not in path.read_bytes(), path
        for raw in other_saw:
            assert secret.encode() not in raw
    assert other_saw == [], "llmtop followed a redirect to another listener"
    assert took < 60
    if mode.startswith("redirect"):
        assert "does not follow redirects" in lines[0]


@pytest.mark.parametrize("mode", [*MODES, "many_headers"])
def test_detection_and_poller_follow_nothing_and_keep_one_line(mode: str) -> None:
    with RecordingServer() as other, HostileServer(mode=mode, target=other.url) as bad:
        info = detect_engine(bad.url, HEADERS, timeout_s=2.0)
        poller = MetricsPoller(bad.url + "/metrics", "prometheus", HEADERS, timeout_s=2.0)
        assert poller.poll_once() is None
        other_saw = list(other.received)
    assert info.name == UNKNOWN
    assert other_saw == []
    assert poller.problem is not None and "\n" not in poller.problem
    for secret in (KEY, HEADER_VALUE):
        assert secret not in poller.problem and secret not in repr(info.public())


def test_side_request_refuses_a_100_mb_metrics_page_without_reading_it() -> None:
    with HostileServer(mode="huge_body", body_mb=100) as bad:
        t0 = time.monotonic()
        with pytest.raises(SideRequestError, match="more than"):
            request(bad.url + "/metrics", timeout_s=5.0, max_bytes=8 << 20)
        took = time.monotonic() - t0
        poller = MetricsPoller(bad.url + "/metrics", "prometheus", timeout_s=5.0)
        assert poller.poll_once() is None
    assert took < 1.0  # refused on its Content-Length, not read
    assert poller.problem is not None and "more than" in poller.problem


def test_side_request_caps_an_endless_body_and_a_slow_server() -> None:
    with (
        HostileServer(mode="endless_body") as endless,
        pytest.raises(SideRequestError, match="more than 1,048,576 bytes"),
    ):
        request(endless.url + "/metrics", timeout_s=10.0, max_bytes=1 << 20)
    with HostileServer(mode="slow_headers") as slow:
        t0 = time.monotonic()
        with pytest.raises(SideRequestError, match="no answer within 1 s"):
            request(slow.url + "/metrics", timeout_s=1.0)
        assert time.monotonic() - t0 < 3.0  # one deadline for the whole exchange


def test_side_requests_ignore_http_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    with RecordingServer() as proxy, RecordingServer() as target:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        reply = request(target.url + "/v1/models", HEADERS)
        assert reply.status == 200
        proxy_saw, target_saw = list(proxy.received), list(target.received)
    assert proxy_saw == [] and len(target_saw) == 1


def test_escape_sequences_from_the_server_never_reach_the_terminal(tmp_path: Path) -> None:
    with HostileServer(mode="escape") as bad:
        r = run_cli("run", "--url", bad.url, "--num-requests", "2", "--no-progress")
    assert r.returncode != 0
    assert "bad things" in r.stderr  # the server's words are shown...
    for out in (r.stdout, r.stderr):
        assert "\x1b" not in out and "\x07" not in out  # ...without its control characters
    assert ESCAPE not in r.stderr


def test_a_plain_http_key_to_another_host_is_said_once() -> None:
    from llmtop.config import Target
    from llmtop.preflight import cleartext_key_warning

    os.environ.pop("OPENAI_API_KEY", None)
    remote = Target("http://10.1.2.3:8000", api_key=KEY)
    assert "clear text" in (cleartext_key_warning(remote) or "")
    assert KEY not in (cleartext_key_warning(remote) or "")
    for quiet in ("http://127.0.0.1:8000", "http://localhost:8000", "https://10.1.2.3:8000"):
        assert cleartext_key_warning(Target(quiet, api_key=KEY)) is None
    assert cleartext_key_warning(Target("http://10.1.2.3:8000")) is None
    os.environ["OPENAI_API_KEY"] = KEY
    try:
        assert "OPENAI_API_KEY" in (cleartext_key_warning(remote) or "")
    finally:
        del os.environ["OPENAI_API_KEY"]
