"""`--ray ray://HOST:PORT` (Ray client mode), `--save-requests` and conversations over Ray.

A real two-node Ray cluster on loopback (Ray's own `ray.cluster_utils.Cluster`) whose head
runs a Ray client server; the real CLI connects to it through `ray://127.0.0.1:PORT` as it
would to a remote cluster. Every Ray process the module starts is stopped at its end
(`cluster.shutdown()`), and the test checks that none is left.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmtop.load.arrivals import ArrivalSchedule
from tests.conftest import run_cli
from tests.support.scripted_server import Script, ScriptedServer
from tests.support.workload_server import WorkloadServer
from tests.test_workers_conversations import OUT, check_conversations

pytest.importorskip("ray", reason="Ray is the llmtop[ray] extra; .ci/run installs it")
pytest.importorskip("grpc", reason="Ray client mode (ray://) needs ray[client]")
pytestmark = pytest.mark.slow

NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc: no tool needed)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out


@pytest.fixture(scope="module")
def client_cluster() -> Iterator[tuple[Any, str]]:
    from ray.cluster_utils import Cluster

    before = _children(os.getpid())
    port = _free_port()
    head = {**NODE, "include_dashboard": False, "ray_client_server_port": port}
    # The head's client proxy starts a Python server per client and gives up on it after
    # 30 s (RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S). On CI's 2 cores a first session's
    # server sometimes never comes up: the CLI's retry is what gets through, and a longer
    # wait (120 s was tried) only made each such test take 140 s.
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        c.add_node(**NODE)
        c.wait_for_nodes(timeout=120)
        yield c, f"ray://127.0.0.1:{port}"
    finally:
        c.shutdown()
    left = {p for p in _children(os.getpid()) - before if _is_ray(p)}
    assert not left, f"Ray processes left running: {sorted(left)}"


def _is_ray(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and b"ray" in cmd


def _node_ids(cluster: Any) -> set[str]:
    return {n.node_id for n in cluster.list_all_nodes()}


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    srv = ScriptedServer(Script(ttft_ms=20, itl_ms=5)).start_in_thread()
    srv.reset(match_tokens=6)  # the load's requests, not the CLI's preflight probe
    yield srv
    srv.stop_thread()


@pytest.mark.parametrize("save", [False, True], ids=["histograms", "save-requests"])
def test_ray_client_two_workers_two_nodes(
    client_cluster: tuple[Any, str], scripted: ScriptedServer, tmp_path: Path, save: bool
) -> None:
    """`--ray ray://…`: one worker a node, nothing lost, TTFT like the server's; with
    --save-requests every request is in the file, on the parent's clock (the two nodes'
    rows interleave into the one schedule)."""
    cluster, address = client_cluster
    rate, n, seed = 30.0, 60, 7
    log = tmp_path / "req.jsonl"
    r = run_cli(
        "run", "--url", scripted.url, "--model", "scripted", "--ray", address,
        "--workers", "2", "--request-rate", str(rate), "--num-requests", str(n),
        "--seed", str(seed), "--input-len", "8", "--output-len", "6", "--no-progress",
        *(["--save-requests", str(log)] if save else []),
        json_path=tmp_path / "o.json", timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = r.data
    assert d["completed"] == n and d["failed"] == 0
    assert scripted.stats.completed == n  # nothing lost between the server and the figures
    nodes = [w["node"] for w in d["workers"]]
    assert len(set(nodes)) == 2 and set(nodes) == _node_ids(cluster)
    assert d["ray"]["address"] == address and d["ray"]["placement"] == "STRICT_SPREAD"
    assert [w["completed"] for w in d["workers"]] == [n // 2, n // 2]
    truth = scripted.stats.summary()["ttft_ms"]["p50"]
    assert abs(d["ttft_ms"]["p50"] - truth) <= 2.0, (d["ttft_ms"]["p50"], truth)
    assert f"Ray at {address}" in r.stdout
    if not save:
        assert not log.exists()
        return
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == n and all(row["error"] is None and row["step"] == 0 for row in rows)
    ttfts = sorted(row["ttft_ms"] for row in rows)
    assert abs(ttfts[n // 2] - d["ttft_ms"]["p50"]) <= 0.5  # the rows are the figures' records
    # the rows' times are on the parent's clock: dealt over two nodes, they are the schedule
    intended = sorted(row["intended_ms"] for row in rows)
    ref = ArrivalSchedule(rate, 1.0, seed)
    ref.start(0)
    want = [t / 1e6 for t in ref.take_due(10**12)[:n]]
    got = [t - intended[0] for t in intended]
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) < 0.1, (got[:5], want[:5])
    assert all(0 <= row["send_ms"] - row["intended_ms"] < 1000 for row in rows)


@pytest.mark.parametrize("save", [False, True], ids=["histograms", "save-requests"])
def test_conversations_over_ray_stay_whole_and_merge_by_turn(
    client_cluster: tuple[Any, str], tmp_path: Path, save: bool
) -> None:
    """Shipped as interval histograms (by_turn travels as its own sparse counters) or as
    raw records (--save-requests): the same per-turn figures."""
    _, address = client_cluster
    with WorkloadServer() as srv:
        r = run_cli(
            "run", "--url", srv.url, "--api", "chat", "--turns", "3", "--think-time", "0.01",
            "--input-len", "40", "--output-len", str(OUT), "--num-requests", "6",
            "--request-rate", "30", "--ray", address, "--workers", "2", "--no-progress",
            *(["--save-requests", str(tmp_path / "r.jsonl")] if save else []),
            json_path=tmp_path / "o.json", timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        check_conversations(srv, r.data, convs=6, turns=3)
        assert [w["completed"] for w in r.data["workers"]] == [9, 9]
        assert r.data["by_turn"]["2"]["cached_prompt_tokens"] > 0
    if save:
        rows = (tmp_path / "r.jsonl").read_text().splitlines()
        assert len(rows) == 18
