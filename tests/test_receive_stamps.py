"""Token times are the kernel's receive stamps, not the moment the loop got round to reading.

A real socket server in a thread writes a chunk while the client's event loop is blocked;
the chunk's time must be the write's, not the end of the block. With LLMTOP_RX_STAMPS=user
(the loop's own stamps) the same run shows the block, so the test can tell the two apart.
(One recvmsg carries one stamp, the last packet's: chunks that queue up together while the
loop is away for longer than a token gap share the latest one. At 400 streams the loop is
behind by well under a millisecond, against gaps of 10 ms, so each read is one chunk.)
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import sys
import threading
import time

import pytest
import trustme

from llmtop.backends.http import ConnectionPool, Exchange
from llmtop.backends.link import SCM_TIMESTAMPNS, ReceiveClock
from llmtop.metrics import records
from tests.conftest import assert_one_line_error, run_cli
from tests.support.fault_server import FaultServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux stamps")

CHUNK = b'data: {"choices":[{"text":"x"}],"usage":{"prompt_tokens":3,"completion_tokens":%d}}\n\n'
SERVER_DELAY_S = 0.03  # request in → first chunk out
BLOCK_S = 0.15  # the client's loop is stuck this long right after sending
SECOND_CHUNK_S = 0.25  # after the first: the loop is free again by then


def _chunk(n: int) -> bytes:
    body = CHUNK % n
    return b"%x\r\n%s\r\n" % (len(body), body)


class OneStreamServer:
    """Answers one request with two chunks and records when each write left (perf_counter)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.writes_ns: list[tuple[int, int]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            got = b""
            while b"\r\n\r\n" not in got:
                got += conn.recv(65536)
            time.sleep(SERVER_DELAY_S)
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            head += b"transfer-encoding: chunked\r\n\r\n"
            for data in (head + _chunk(1), _chunk(2)):
                a = time.perf_counter_ns()
                conn.sendall(data)
                self.writes_ns.append((a, time.perf_counter_ns()))
                time.sleep(SECOND_CHUNK_S)
            done = b"data: [DONE]\n\n"
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            conn.recv(1)  # until the client closes

    def close(self) -> None:
        self.listener.close()


async def _blocked_stream(port: int, tls: bool) -> tuple[records.RequestRecord, ConnectionPool]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[records.RequestRecord] = loop.create_future()
    pool = ConnectionPool(loop, "127.0.0.1", port, tls, 5.0, lambda ex, r: done.set_result(r))
    ex = Exchange(0, 0, True)
    raw = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    pool.submit(ex, raw)
    while ex.conn is None:  # sent (the connect is a task)
        await asyncio.sleep(0.001)
    time.sleep(BLOCK_S)  # the loop is stuck: tokens arrive meanwhile
    try:
        return await asyncio.wait_for(done, 10), pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA, tmp_path, monkeypatch) -> ssl.SSLContext:
    """A server context for 127.0.0.1, and its CA trusted by every client (SSL_CERT_FILE)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    return ctx


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("mode", ["kernel", "user"])
def test_a_chunk_is_timed_when_it_arrived_not_when_the_loop_read_it(
    mode, tls, monkeypatch, request
):
    monkeypatch.setenv("LLMTOP_RX_STAMPS", mode)
    server = OneStreamServer(request.getfixturevalue("server_tls") if tls else None)
    try:
        rec, pool = asyncio.run(_blocked_stream(server.port, tls))
    finally:
        server.close()
    assert rec.error is None, rec.detail
    (a1, b1), (a2, b2) = server.writes_ns
    first, last = rec.first_ns, rec.last_ns
    assert b1 - a1 < 20_000_000, "the server's own write stalled; nothing to compare"
    if mode == "kernel":
        assert pool.rx_clock.kernel >= 2 and pool.rx_clock.user == 0
        # Loopback stamps the packet inside the sender's write: within it, give or take the
        # clock-offset read (tens of ns) and a bit of slack.
        slack = 200_000
        assert a1 - slack <= first <= b1 + slack, (first - a1, b1 - a1)
        assert a2 - slack <= last <= b2 + slack, (last - a2, b2 - a2)
    else:
        assert pool.rx_clock.kernel == 0
        # The first chunk is read after the block: stamped at its end, ~120 ms late.
        assert first - b1 > 0.5 * (BLOCK_S - SERVER_DELAY_S) * 1e9, (first - b1) / 1e6
        assert last >= a2


def _timespec(t_ns: int) -> list[tuple[int, int, bytes]]:
    raw = struct.pack("@qq", t_ns // 1_000_000_000, t_ns % 1_000_000_000)
    return [(socket.SOL_SOCKET, SCM_TIMESTAMPNS, raw)]


def test_a_stamp_is_converted_to_perf_counter_time():
    clock = ReceiveClock()
    before = time.perf_counter_ns()
    t = clock.stamp(_timespec(time.time_ns() - 2_000_000))  # arrived 2 ms ago
    after = time.perf_counter_ns()
    assert before - 2_500_000 <= t <= after - 1_500_000
    assert (clock.kernel, clock.user) == (1, 0)


def test_a_stamp_from_across_a_clock_step_is_not_trusted():
    clock = ReceiveClock()
    for step_ns in (-120_000_000_000, 30_000_000):  # two minutes back; 30 ms ahead
        before = time.perf_counter_ns()
        t = clock.stamp(_timespec(time.time_ns() + step_ns))
        assert before <= t <= time.perf_counter_ns()  # the read's own time instead
    assert clock.stamp([]) > 0  # no stamp at all: the read's time too
    assert (clock.kernel, clock.user) == (0, 3)


@pytest.mark.parametrize("mode", ["kernel", "user"])
def test_run_says_how_its_tokens_were_timed(mode: str, fault_server, tmp_path) -> None:
    """`llmtop run` over plain HTTP: the summary counts kernel-stamped reads; forced to the
    loop's stamps, the report says so."""
    r = run_cli(
        "run", "--url", fault_server.url, "--num-requests", "10", "--request-rate", "50",
        "--input-len", "16", "--output-len", "8",
        json_path=tmp_path / "out.json", env={"LLMTOP_RX_STAMPS": mode},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    stamps = r.data["receive_stamps"]
    note = "event loop's stamps" in r.stdout
    if mode == "kernel":
        assert stamps["kernel"] >= 10 * 8 and stamps["user"] == 0 and not note, stamps
    else:
        assert stamps["kernel"] == 0 and stamps["user"] >= 10 * 8 and note, stamps


def test_https_run_keeps_kernel_stamps(server_tls, tmp_path) -> None:
    """TLS rides on the same raw socket (ssl's memory BIOs): kernel stamps, all requests done."""
    server = FaultServer(ssl_context=server_tls).start()
    try:
        r = run_cli(
            "run", "--url", server.url, "--num-requests", "10", "--request-rate", "50",
            "--input-len", "16", "--output-len", "8",
            json_path=tmp_path / "out.json", env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")},
        )  # fmt: skip
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    d = r.data
    assert d["completed"] == 10 and d["failed"] == 0 and d["output_tokens"] == 80
    assert d["receive_stamps"]["kernel"] >= 80 and d["receive_stamps"]["user"] == 0


def test_https_with_an_untrusted_certificate_is_one_clear_error(server_tls, tmp_path) -> None:
    server = FaultServer(ssl_context=server_tls).start()
    try:
        r = run_cli(
            "run", "--url", server.url, "--num-requests", "2", "--input-len", "8",
            "--output-len", "2", env={"SSL_CERT_FILE": str(tmp_path / "nothing.pem")},
        )  # fmt: skip
    finally:
        server.stop()
    assert_one_line_error(r, "certificate")
