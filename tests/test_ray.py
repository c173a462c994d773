"""`--ray`: workers as Ray actors on a real local Ray cluster of two nodes (issue 13).

The cluster is Ray's own multi-node test cluster (`ray.cluster_utils.Cluster`): a head and a
second node, each a real raylet with its own node id, on this host. The load goes to the
scripted server, whose own records are the truth the client is checked against.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from llmtop.config import LoadPlan, RunConfig, Target, Workload
from llmtop.session import LoadSession, drive
from llmtop.slo import Slo
from tests.support.scripted_server import Script, ScriptedServer

pytest.importorskip("ray", reason="Ray is the llmtop[ray] extra; .ci/run installs it")
pytestmark = pytest.mark.slow

NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    c.add_node(**NODE)
    c.wait_for_nodes(timeout=120)
    yield c
    c.shutdown()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer(Script(ttft_ms=20, itl_ms=5)).start_in_thread()
    yield srv
    srv.stop_thread()


def _run(cluster: Any, server: ScriptedServer, during: Any = None, **plan: Any) -> LoadSession:
    config = RunConfig(
        Target(server.url, model="scripted"),
        Workload(input_len=8, output_len=6, seed=1),
        LoadPlan(seed=3, workers=2, ray=cluster.address, **plan),
        window_s=3.0,
    )
    session = LoadSession(config)
    session.start()
    t0 = time.monotonic()

    def on_frame(frame: Any) -> bool:
        if during is not None:
            during(time.monotonic() - t0, session)
        return False

    drive(session, on_frame)
    return session


def _node_ids(cluster: Any) -> set[str]:
    return {n.node_id for n in cluster.list_all_nodes()}


def test_two_workers_on_two_nodes_lose_nothing_and_time_like_the_server(
    cluster: Any, server: ScriptedServer
) -> None:
    session = _run(cluster, server, request_rate=30.0, num_requests=120)
    s = session.summary()
    assert session.failure is None, session.failure
    assert s["completed"] == 120 and s["failed"] == 0
    assert server.stats.completed == 120  # nothing lost between the server and the figures
    nodes = [w["node"] for w in s["workers"]]
    assert len(set(nodes)) == 2 and set(nodes) == _node_ids(cluster)  # one worker a node
    assert s["ray"]["placement"] == "STRICT_SPREAD"
    assert [w["completed"] for w in s["workers"]] == [60, 60]  # the one schedule, dealt
    truth = server.stats.summary()["ttft_ms"]["p50"]
    assert abs(s["ttft_ms"]["p50"] - truth) <= 2.0, (s["ttft_ms"]["p50"], truth)
    assert s["workers_lost"] == []


def test_a_new_slo_mid_run_reaches_every_nodes_goodput(
    cluster: Any, server: ScriptedServer
) -> None:
    """The UI's `l` under `--ray`: the nodes count goodput themselves (they ship figures),
    so the new limits must reach them. No limits for the first 3 s (every request good),
    then TTFT <= 5 ms against the server's 20 ms (none good)."""
    switched: list[float] = []

    def tighten(elapsed: float, session: LoadSession) -> None:
        if not switched and elapsed > 3.0:
            session.set_slo(Slo.parse("ttft_p99<=5ms"))
            switched.append(elapsed)

    session = _run(cluster, server, tighten, request_rate=30.0, duration_s=6.0)
    s = session.summary()
    assert switched and session.failure is None, session.failure
    assert s["completed"] >= 150
    # before the switch every request was good, after it none: about half are good
    assert 0.25 * s["completed"] <= s["good_requests"] <= 0.75 * s["completed"], s


def test_a_node_that_dies_mid_run_is_recorded_and_the_offered_rate_holds(
    cluster: Any, server: ScriptedServer
) -> None:
    head = cluster.head_node.node_id
    victim = next(n for n in cluster.list_all_nodes() if n.node_id != head)
    removed: list[float] = []

    def kill(elapsed: float, _session: LoadSession) -> None:
        if not removed and elapsed > 3.0:
            cluster.remove_node(victim)
            removed.append(elapsed)

    rate, duration = 30.0, 9.0
    try:
        session = _run(cluster, server, kill, request_rate=rate, duration_s=duration)
    finally:
        cluster.add_node(**NODE)  # the module's cluster has two nodes again
    s = session.summary()
    assert removed and session.failure is None, session.failure
    lost = s["workers_lost"]
    assert len(lost) == 1 and lost[0]["node"] == victim.node_id
    assert "Ray worker lost" in lost[0]["reason"] and lost[0]["respread_to"] != []
    survivor = next(w for w in s["workers"] if not w["lost"])
    assert survivor["node"] == head
    # what the lost worker measured before it died is kept
    dead = next(w for w in s["workers"] if w["lost"])
    assert dead["completed"] > 0
    assert s["completed"] == dead["completed"] + survivor["completed"]
    # the run went on at the offered rate: the last seconds completed ~rate req/s
    tail = [p.request_rate for p in session.series if p.t_s > session.series[-1].t_s - 3]
    assert tail and sum(tail) / len(tail) >= 0.7 * rate, tail
    # only the dead worker's share between its death and the re-spread is missing
    assert s["completed"] >= 0.8 * rate * duration
    assert server.stats.completed - s["completed"] <= dead["lost_in_flight"] + 2
