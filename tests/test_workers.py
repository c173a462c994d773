"""Scale-out (issue 13): the split schedule, the exact merge, the per-worker book and guard.

Pure parts run on a fake clock; the group tests run real load processes against the scripted
server on loopback.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from typing import Any

import numpy as np
import pytest

from llmtop.config import LoadPlan, RunConfig, Target, Workload
from llmtop.load.arrivals import ArrivalSchedule, TraceSchedule
from llmtop.load.book import (
    CPU_LIMIT,
    MIN_SLIP_SAMPLES,
    WorkerBook,
    workers_needed,
)
from llmtop.load.remote import DeltaCollector, SparseHistogram, pack_records, unpack_records
from llmtop.load.share import (
    DealtSchedule,
    WorkerShare,
    group_size,
    split_evenly,
    worker_plan,
)
from llmtop.metrics.catalog import METRICS
from llmtop.metrics.collector import Collector
from llmtop.metrics.hdr import counts_of, new_histogram, record_many
from llmtop.metrics.records import RequestRecord

MS = 1_000_000
S = 1_000_000_000


# -- the split schedule -------------------------------------------------------------------------
def _inner(kind: str, seed: int = 7) -> Any:
    if kind == "poisson":
        return ArrivalSchedule(200.0, 1.0, seed)
    if kind == "gamma":
        return ArrivalSchedule(200.0, 0.3, seed)
    offsets = sorted(random.Random(seed).randrange(0, 3 * S) for _ in range(500))
    return TraceSchedule([o - offsets[0] for o in offsets])


# controls at agreed instants: (at_ns, kind, value)
CONTROLS = [(400 * MS, "rate", 500.0), (900 * MS, "pause", 0.0), (1200 * MS, "resume", 0.0)]
CONTROLS += [(1500 * MS, "rate", 80.0)]
END_NS = 2500 * MS


def _apply(sched: Any, kind: str, value: float, at_ns: int) -> None:
    if kind == "rate":
        sched.set_rate(at_ns, value)
    elif kind == "pause":
        sched.pause()
    else:
        sched.resume(at_ns)


def _reference(kind: str) -> list[int]:
    """One process's schedule, with every control applied at its agreed instant."""
    s = _inner(kind)
    s.start(0)
    out: list[int] = []
    for at, k, v in CONTROLS:
        out += s.take_due(at - 1)
        _apply(s, k, v, at)
    out += s.take_due(END_NS)
    return out


def _worker(kind: str, index: int, n: int, rng: random.Random, **kw: Any) -> list[int]:
    """One worker of n: it wakes at its own (random) moments, hears of each control at a
    random moment before its instant, and applies it through hold/applying as the hook does."""
    share = WorkerShare(index, n, tuple(range(n)), **kw)
    d = DealtSchedule(_inner(kind), share)
    d.start(0)
    got: list[int] = []
    pending = list(CONTROLS)
    heard = [at - rng.randrange(1, 40 * MS) for at, _, _ in CONTROLS]
    now = 0
    while now < END_NS:
        now = min(now + rng.randrange(1, 7 * MS), END_NS)
        for i, (at, _, _) in enumerate(CONTROLS):
            if heard[i] is not None and heard[i] <= now:
                assert d.hold(at)
                heard[i] = None  # type: ignore[call-overload]
        while pending and pending[0][0] <= now:
            at, k, v = pending.pop(0)
            got += d.take_due(at - 1)
            d.release(at)
            d.applying(at)
            _apply(d, k, v, at)
            d.applying(None)
        got += d.take_due(now)
    return got


@pytest.mark.parametrize("kind", ["poisson", "gamma", "trace"])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_union_of_the_workers_is_the_one_schedule(kind: str, n: int) -> None:
    ref = _reference(kind)
    assert len(ref) > 100
    rng = random.Random(n)
    shares = [_worker(kind, i, n, rng) for i in range(n)]
    union = sorted(t for share in shares for t in share)
    assert union == sorted(ref)
    # every worker sends its 1/N (round-robin: the counts differ by at most one)
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1, sizes


def test_a_control_heard_too_late_is_detected() -> None:
    d = DealtSchedule(_inner("poisson"), WorkerShare(0, 2, (0, 1)))
    d.start(0)
    d.take_due(100 * MS)
    assert d.last_taken_ns is not None
    assert not d.hold(d.last_taken_ns)  # arrivals at or past it were already taken
    assert d.hold(d.last_taken_ns + 1)


def test_a_lost_workers_share_is_dealt_over_the_others_from_an_agreed_instant() -> None:
    """Worker 1 of 3 dies at 1 s; from 1.05 s on the other two send everything."""
    ref = ArrivalSchedule(300.0, 1.0, 3)
    ref.start(0)
    expected = ref.take_due(3 * S)
    lost_at, respread_at = 1 * S, 1050 * MS
    sent: list[int] = []
    for i in range(3):
        d = DealtSchedule(ArrivalSchedule(300.0, 1.0, 3), WorkerShare(i, 3, (0, 1, 2)))
        d.start(0)
        if i == 1:
            sent += d.take_due(lost_at)  # then it is gone
            continue
        sent += d.take_due(respread_at - 1)
        d.set_members(respread_at, (0, 2))
        sent += d.take_due(3 * S)
    before = [t for t in expected if t < lost_at]
    # between the loss and the re-spread only the lost worker's own arrivals are missing
    gap = [t for k, t in enumerate(expected) if lost_at <= t < respread_at and k % 3 != 1]
    after = [t for t in expected if t >= respread_at]
    assert sorted(t for t in sent if t < lost_at) == before
    assert sorted(t for t in sent if lost_at <= t < respread_at) == gap
    assert sorted(t for t in sent if t >= respread_at) == after  # the offered rate holds


def test_num_requests_counts_measured_arrivals_of_the_whole_group() -> None:
    n_max, warmup_s = 37, 0.1
    ref = ArrivalSchedule(400.0, 1.0, 11)
    ref.start(0)
    measured_ref = [t for t in ref.take_due(5 * S) if t >= warmup_s * S][:n_max]
    done = []
    measured: list[int] = []
    for i in range(3):
        share = WorkerShare(i, 3, (0, 1, 2), num_requests=n_max, warmup_s=warmup_s)
        d = DealtSchedule(ArrivalSchedule(400.0, 1.0, 11), share, lambda: done.append(1))
        d.start(0)
        now = 0
        while now < 5 * S and not d.exhausted:
            now += 3 * MS
            measured += [t for t in d.take_due(now) if t >= warmup_s * S]
        assert d.exhausted and d.next_due_ns() is None
    assert sorted(measured) == measured_ref
    assert len(done) == 3


def test_shares_sum_to_the_whole() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert sum(split_evenly(7, 7)) == 7
    closed = LoadPlan(concurrency=10, num_requests=101)
    plans = [worker_plan(closed, i, 3) for i in range(3)]
    assert [p.concurrency for p in plans] == [4, 3, 3]
    assert sum(p.num_requests or 0 for p in plans) == 101
    capped = LoadPlan(request_rate=50.0, max_concurrency=9, num_requests=40)
    plans = [worker_plan(capped, i, 2) for i in range(2)]
    assert [p.max_concurrency for p in plans] == [5, 4]
    assert all(p.request_rate == 50.0 and p.num_requests is None for p in plans)
    assert group_size(LoadPlan(concurrency=2), 8) == 2  # a closed loop of 2 needs 2 workers
    assert worker_plan(closed, 0, 1) is closed


# -- the exact merge ----------------------------------------------------------------------------
def _records(n: int, rng: np.random.Generator) -> list[RequestRecord]:
    out = []
    for i in range(n):
        intended = int(rng.integers(0, 4 * S))
        send = intended + int(rng.integers(0, 3 * MS))
        err = None if i % 17 else "http_500"
        tokens = int(rng.integers(2, 60))
        stamps = (
            np.cumsum(rng.integers(1 * MS, 40 * MS, tokens)) + send + int(rng.integers(5, 500)) * MS
        )
        k = np.ones(tokens, dtype=np.int32)
        k[:: max(tokens // 3, 1)] = 2  # some chunks carry two tokens
        first, last = (int(stamps[0]), int(stamps[-1])) if err is None else (0, 0)
        out.append(
            RequestRecord(
                intended,
                intended,
                send,
                first,
                last,
                last or send + MS,
                int(rng.integers(10, 100)),
                int(k.sum()) if err is None else 0,
                stamps.astype(np.int64).tobytes() if err is None else b"",
                k.tobytes() if err is None else b"",
                err,
                "boom" if err else "",
                intended >= 200 * MS,
            )
        )
    return out


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for m in METRICS:
        assert np.array_equal(counts_of(a[m]), counts_of(b[m])), m
        assert a[m].get_total_count() == b[m].get_total_count(), m
        if a[m].get_total_count():
            assert a[m].get_min_value() == b[m].get_min_value(), m
            assert a[m].get_max_value() == b[m].get_max_value(), m


@pytest.mark.parametrize("n_workers", [2, 4, 7])
def test_merged_histograms_of_n_workers_equal_the_histogram_of_all_their_records(
    n_workers: int,
) -> None:
    rng = np.random.default_rng(n_workers)
    # conversations' turns too: by_turn travels as its own sparse counters
    recs = [
        r._replace(turn=i % 4, cached_tokens=i % 5 - 1) for i, r in enumerate(_records(1500, rng))
    ]
    steps = [(0, 10.0), (int(1.5 * S), 20.0), (int(3 * S), 40.0)]
    # one collector fed every record
    whole = Collector(10.0, {"ttft": 200.0})
    for t, offered in steps:
        whole.begin_step(t, offered)
    # n workers, each its own collector, shipping sparse interval histograms, merged
    parent = Collector(10.0, {"ttft": 200.0})
    for t, offered in steps:
        parent.begin_step(t, offered)
    workers = [DeltaCollector(10.0, {"ttft": 200.0}) for _ in range(n_workers)]
    for w in workers:
        for t, offered in steps:
            w.begin_step(t, offered)
    owner = rng.integers(0, n_workers, len(recs))
    for n, batch in enumerate(np.array_split(np.arange(len(recs)), 9)):  # several shipments
        whole.add([recs[j] for j in batch])
        for i, w in enumerate(workers):
            w.add([recs[j] for j in batch if owner[j] == i])
            shipped = w.drain(i)
            if shipped is not None:
                shipped.merge_into(parent)
        whole.tick(5 * S + n * MS)  # both pack old steps away at the same moments
        parent.tick(5 * S + n * MS)
    _assert_same(whole.cumulative, parent.cumulative)
    assert whole.counts == parent.counts
    for a, b in zip(whole.steps, parent.steps, strict=True):
        _assert_same(a.all_histograms(), b.all_histograms())
        assert a.counts == b.counts
    assert (whole.first_send_ns, whole.last_end_ns) == (parent.first_send_ns, parent.last_end_ns)
    assert whole.error_examples == parent.error_examples
    assert whole.late_records == parent.late_records > 0
    assert sorted(whole.turns.by_turn) == sorted(parent.turns.by_turn) == [1, 2, 3]
    for turn, a in whole.turns.by_turn.items():
        b = parent.turns.by_turn[turn]
        for m, h in a.histograms.items():
            assert np.array_equal(counts_of(h), counts_of(b.histograms[m])), (turn, m)
    assert whole.turns.summary(True) == parent.turns.summary(True)


def test_raw_records_cross_in_batches_and_land_on_the_parents_clock() -> None:
    """--save-requests over Ray: every time moves by the clock offset, "none" (0) stays 0."""
    recs = _records(40, np.random.default_rng(3))
    recs[1] = recs[1]._replace(reasoning_first_ns=recs[1].send_ns + MS)
    shift = 123_456_789
    back = unpack_records(pack_records(recs), shift)
    assert len(back) == len(recs)
    for a, b in zip(recs, back, strict=True):
        for f in ("intended_ns", "slot_ns", "send_ns", "first_ns", "last_ns", "end_ns"):
            assert getattr(b, f) == (getattr(a, f) + shift if getattr(a, f) else 0), f
        assert b.reasoning_first_ns == (a.reasoning_first_ns + shift if a.reasoning_first_ns else 0)
        assert b.answer_first_ns == 0
        assert np.array_equal(
            np.frombuffer(b.chunk_ns, dtype=np.int64),
            np.frombuffer(a.chunk_ns, dtype=np.int64) + shift,
        )
        assert b._replace(
            intended_ns=0, slot_ns=0, send_ns=0, first_ns=0, last_ns=0, end_ns=0, chunk_ns=b"",
            reasoning_first_ns=0,
        ) == a._replace(
            intended_ns=0, slot_ns=0, send_ns=0, first_ns=0, last_ns=0, end_ns=0, chunk_ns=b"",
            reasoning_first_ns=0,
        )  # fmt: skip
    assert any(not r.first_ns for r in back)  # failed requests were in the batch


def test_a_sparse_histogram_adds_exactly() -> None:
    rng = np.random.default_rng(1)
    a, b = new_histogram(), new_histogram()
    values = rng.integers(1, 10_000_000, 5000)
    record_many(a, values)
    SparseHistogram.of(a).add_into(b)
    SparseHistogram.of(a).add_into(b)
    assert np.array_equal(counts_of(b), 2 * counts_of(a))
    assert b.get_total_count() == 2 * a.get_total_count()
    assert (b.get_min_value(), b.get_max_value()) == (a.get_min_value(), a.get_max_value())


# -- the per-worker book and the client-saturation guard ---------------------------------------
def _busy_book(cpu_per_s: float, slip_ms: float, n: int = 2) -> WorkerBook:
    book = WorkerBook(["h"] * n, cores_free=8)
    for i in range(n):
        for s in range(12):
            book.status(i, s * S, cpu_per_s * s, sent=100 * s, in_flight=3)
        rec = RequestRecord(0, 0, int(slip_ms * MS), 1, 2, 3, 1, 1, b"", b"", None, "", True)
        book.records(i, [rec] * MIN_SLIP_SAMPLES, 11 * S)
    return book


def test_the_guard_says_when_the_client_is_the_bottleneck() -> None:
    calm = _busy_book(0.3, 0.2)
    assert not calm.verdict(11 * S).bound
    assert not calm.run_verdict().bound
    busy = _busy_book(0.95, 0.2)
    v = busy.verdict(11 * S)
    assert v.bound and any("CPU 95 %" in r for r in v.reasons)
    assert v.workers_needed == 3  # 1.9 cores of load at 70 % each
    assert "the CLIENT is the bottleneck" in v.message and "--workers 3" in v.message
    assert busy.run_verdict().as_dict()["workers_needed"] == 3
    late = _busy_book(0.6, 2.5)
    v = late.verdict(11 * S)
    assert any("send slip p99 2.50 ms" in r for r in v.reasons) and not v.host_busy
    assert v.workers_needed == 3  # one more than now, at least
    crowded = _busy_book(0.05, 2.5)  # late while idle: others hold the host's CPU
    v = crowded.verdict(11 * S)
    assert v.bound and v.host_busy and "more workers will not fix it" in v.message
    assert workers_needed([0.95, 0.9], 2, True) == 3
    assert workers_needed([0.2], 1, False) == 1
    assert CPU_LIMIT < 0.9


def test_a_growing_loop_lag_trips_the_guard() -> None:
    book = WorkerBook(["h"], cores_free=2)
    book.lags(0, np.full(50, 200, dtype=np.int64), 0, 1 * S)  # 0.2 ms: quiet
    book.lags(0, np.full(50, 300, dtype=np.int64), 0, 7 * S)  # next stretch
    assert not book.verdict(7 * S).bound
    book.lags(0, np.full(50, 5000, dtype=np.int64), 0, 13 * S)  # 5 ms and rising
    v = book.verdict(13 * S)
    assert v.bound and "loop lag growing" in v.message
    assert book.run_verdict().bound  # remembered for the whole run's verdict


# -- real load processes --------------------------------------------------------------------------
@pytest.fixture
def scripted() -> Any:
    from tests.support.scripted_server import Script, ScriptedServer

    server = ScriptedServer(Script(ttft_ms=20, itl_ms=5)).start_in_thread()
    yield server
    server.stop_thread()


def _config(url: str, **plan: Any) -> RunConfig:
    return RunConfig(
        Target(url, model="scripted"),
        Workload(input_len=8, output_len=6, seed=5),
        LoadPlan(**plan),
    )


def _drive(config: RunConfig, during: Any = None) -> Any:
    from llmtop.session import LoadSession, drive

    session = LoadSession(config)
    session.start()
    records: list[RequestRecord] = []
    session.record_sink = lambda r, step: records.append(r)
    t0 = time.monotonic()

    def on_frame(frame: Any) -> bool:
        if during is not None:
            during(session, time.monotonic() - t0)
        return False

    drive(session, on_frame)
    return session, records


def test_two_workers_send_exactly_the_one_schedule_and_the_server_sees_every_request(
    scripted: Any,
) -> None:
    config = _config(scripted.url, request_rate=60.0, num_requests=90, burstiness=0.5, seed=9)
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, workers=2))
    session, records = _drive(config)
    s = session.summary()
    assert s["completed"] == 90 and s["failed"] == 0
    assert scripted.stats.completed == 90
    t0 = session.collector.steps[0].start_ns  # the start barrier (LoadStarted)
    ref = ArrivalSchedule(60.0, 0.5, 9)
    ref.start(0)
    expected = ref.take_due(10 * S)[:90]
    assert sorted(r.intended_ns - t0 for r in records) == expected
    workers = s["workers"]
    assert [w["id"] for w in workers] == [0, 1]
    assert [w["completed"] for w in workers] == [45, 45]
    assert all(w["node"] == os.uname().nodename for w in workers)
    assert all(w["send_slip_ms"]["count"] == 45 for w in workers)
    assert all(w["loop_lag_ms"]["count"] > 0 for w in workers)
    assert s["workers_lost"] == []


def test_a_worker_killed_mid_run_loses_its_share_and_the_others_take_it_over(
    scripted: Any,
) -> None:
    plan = LoadPlan(request_rate=80.0, duration_s=4.0, seed=4, workers=3)
    config = RunConfig(Target(scripted.url, model="scripted"), Workload(8, 6, seed=5), plan)
    killed: list[int] = []

    def kill(session: Any, elapsed: float) -> None:
        if not killed and session.status is not None and session.status.sent > 100:
            pid = session.process.pids[1]
            os.kill(pid, signal.SIGKILL)
            killed.append(time.perf_counter_ns())

    session, records = _drive(config, kill)
    s = session.summary()
    assert killed and session.failure is None
    lost = s["workers_lost"]
    assert len(lost) == 1 and lost[0]["id"] == 1 and "SIGKILL" in lost[0]["reason"]
    assert lost[0]["respread_to"] == [0, 2]
    assert s["workers"][1]["lost"] and not s["workers"][0]["lost"]
    # from the re-spread on, every arrival of the schedule is sent: the offered rate holds
    assert all(w["late_controls"] == 0 for w in s["workers"])
    t0 = session.collector.steps[0].start_ns
    cut = lost[0]["respread_at_s"] * S + session.start_ns - t0
    ref = ArrivalSchedule(80.0, 1.0, 4)
    ref.start(0)
    expected = [t for t in ref.take_due(4 * S) if t >= cut + MS]
    got = sorted(r.intended_ns - t0 for r in records if r.intended_ns - t0 >= cut + MS)
    assert got == expected
    assert s["completed"] >= 0.6 * 80 * 4


def test_a_worker_lost_while_starting_leaves_the_others_the_whole_schedule(scripted: Any) -> None:
    """Killed before the start barrier: the others deal the one schedule between them."""
    from llmtop.session import LoadSession, drive

    plan = LoadPlan(request_rate=60.0, num_requests=70, seed=6, workers=3)
    session = LoadSession(RunConfig(Target(scripted.url, model="scripted"), Workload(8, 6), plan))
    session.start()
    os.kill(session.process.pids[2], signal.SIGKILL)
    records: list[RequestRecord] = []
    session.record_sink = lambda r, step: records.append(r)
    drive(session)
    s = session.summary()
    assert session.failure is None and s["completed"] == 70
    assert [w["lost"] for w in s["workers"]] == [False, False, True]
    ref = ArrivalSchedule(60.0, 1.0, 6)
    ref.start(0)
    t0 = session.collector.steps[0].start_ns
    assert sorted(r.intended_ns - t0 for r in records) == ref.take_due(10 * S)[:70]


def test_a_rate_change_reaches_every_worker_at_the_same_point_of_the_schedule(
    scripted: Any,
) -> None:
    """The UI's arrows and the knee's steps: the union stays the one schedule, and the new
    step starts where the workers changed rate."""
    plan = LoadPlan(request_rate=40.0, duration_s=5.0, burstiness=0.5, seed=8, workers=3)
    config = RunConfig(Target(scripted.url, model="scripted"), Workload(8, 6), plan)
    changed: list[bool] = []

    def change(session: Any, elapsed: float) -> None:
        if not changed and session.status is not None and session.status.sent >= 30:
            session.set_rate(90.0, "faster")
            changed.append(True)

    session, records = _drive(config, change)
    assert changed and session.failure is None
    steps = session.collector.steps
    assert [s.offered for s in steps] == [40.0, 90.0] and steps[1].label == "faster"
    t0 = steps[0].start_ns
    at = steps[1].start_ns - t0
    assert at < 4 * S, "the rate changed too late to check (a very busy machine)"
    ref = ArrivalSchedule(40.0, 0.5, 8)
    ref.start(0)
    expected = ref.take_due(at - 1)
    ref.set_rate(at, 90.0)
    expected += ref.take_due(5 * S - 1)
    s = session.summary()
    # a worker whose loop stalled past the 100 ms margin would say so here
    assert [w["late_controls"] for w in s["workers"]] == [0, 0, 0]
    assert sorted(r.intended_ns - t0 for r in records) == expected
    assert sum(w["completed"] for w in s["workers"]) == s["completed"] == len(expected)


def test_run_workers_writes_every_worker_into_the_json(scripted: Any, tmp_path: Any) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "r.json"
    res = run_cli(
        "run", "--url", scripted.url, "--request-rate", "30", "--num-requests", "40",
        "--input-len", "8", "--output-len", "6", "--workers", "2", "--no-progress",
        json_path=out,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    d = res.data
    assert d["completed"] == 40 and d["config"]["plan"]["workers"] == 2
    assert [w["id"] for w in d["workers"]] == [0, 1]
    for w in d["workers"]:
        assert {"id", "node", "completed", "failed", "cpu_s", "send_slip_ms", "loop_lag_ms"} <= set(
            w
        )
    assert sum(w["completed"] for w in d["workers"]) == 40
    assert "client_saturation" in d and d["workers_lost"] == [] and d["ray"] is None
    assert "workers     2 on 1 node (this host)" in res.stdout


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--workers", "many"], "give a number of workers"),
        (["--ray", "nohost"], "expected auto, host:port or ray://host:port"),
        (["--ray", "127.0.0.1:1"], "nothing answers there"),
    ],
)
def test_bad_scale_flags_are_one_line_errors(scripted: Any, flags: list[str], needle: str) -> None:
    from tests.conftest import assert_one_line_error, run_cli

    res = run_cli("run", "--url", scripted.url, "--num-requests", "3", *flags, timeout=60)
    assert_one_line_error(res, needle)


def test_ray_client_mode_without_its_extra_is_a_one_line_error(
    scripted: Any, tmp_path: Any
) -> None:
    """`ray://` needs ray[client] (grpcio): said before any load, not after Ray connects."""
    from tests.conftest import assert_one_line_error, run_cli

    pytest.importorskip("ray")
    shim = tmp_path / "grpc"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError('grpc is not installed')\n")
    res = run_cli(
        "run", "--url", scripted.url, "--num-requests", "3", "--ray", "ray://127.0.0.1:1",
        timeout=60, env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert_one_line_error(res, "needs pip install 'ray[client]'")
    assert scripted.stats.requests == 0


def test_a_parent_that_falls_behind_its_workers_is_named() -> None:
    """Behind while busy: the collector is the limit. Behind while idle: a busy host."""
    book = WorkerBook(["h", "h"], cores_free=8)
    for i in range(2):
        book.status(i, 0, 0.0, 0, 0)
        book.status(i, 1 * S, 0.5, 10, 1, behind_ns=2 * MS)
    book.parent_cpu(0, 0.0)
    book.parent_cpu(1 * S, 0.95)  # the parent's core is full
    assert not book.verdict(1 * S).bound
    book.status(0, 2 * S, 1.0, 20, 1, behind_ns=2500 * MS)  # read 2.5 s after it was sent
    v = book.verdict(2 * S)
    assert v.bound and v.parent_behind and "2.5 s late (while busy)" in v.message
    assert "--ray ships histograms" in v.message
    assert book.run_verdict().as_dict()["parent_behind"]
    starved = WorkerBook(["h"], cores_free=1)
    starved.status(0, 0, 0.0, 0, 0)
    starved.status(0, 1 * S, 0.02, 10, 1, behind_ns=1 * MS)
    starved.parent_cpu(0, 0.0)
    starved.parent_cpu(1 * S, 0.03)  # idle parent, idle worker, and still late
    starved.status(0, 2 * S, 0.04, 20, 1, behind_ns=1800 * MS)
    v = starved.verdict(2 * S)
    assert v.bound and not v.parent_behind and v.host_busy
    assert "mostly idle: starved" in v.message and "more workers will not fix it" in v.message


def test_the_table_lists_every_worker_and_says_which_was_lost() -> None:
    from llmtop.output.workers import worker_lines

    slip = {"p99": 0.4, "count": 500}
    summary = {
        "workers": [
            {"id": 0, "node": "a" * 40, "completed": 900, "failed": 1, "cpu_pct": 61.0,
             "send_slip_ms": slip, "loop_lag_ms": {"p99": 0.2}, "lost": False},
            {"id": 1, "node": "b" * 40, "completed": 300, "failed": 0, "cpu_pct": 60.0,
             "send_slip_ms": slip, "loop_lag_ms": {"p99": 0.3}, "lost": True,
             "lost_at_s": 4.2, "lost_reason": "Ray worker lost (ActorDiedError)"},
        ],
        "workers_lost": [{"id": 1, "node": "b" * 40, "at_s": 4.2, "reason": "x",
                          "in_flight_lost": 7, "respread_to": [0], "respread_at_s": 4.45}],
        "ray": {"address": "10.0.0.1:6379", "placement": "STRICT_SPREAD", "nodes": ["a", "b"]},
    }  # fmt: skip
    lines = worker_lines(summary)
    assert lines[0] == "workers     2 on 2 nodes (Ray at 10.0.0.1:6379, STRICT_SPREAD)"
    assert "#0" in lines[1] and "CPU  61 %" in lines[1] and "send slip p99 0.40 ms" in lines[1]
    assert "LOST at 4.2 s (Ray worker lost (ActorDiedError))" in lines[2]
    assert "its share went to #0 from 4.5 s; 7 requests it had sent were lost" in lines[3]
    assert worker_lines({"workers": summary["workers"][:1], "workers_lost": []}) == []


def test_a_wall_clock_instant_maps_onto_this_hosts_monotonic_clock() -> None:
    """The Ray barrier: the same wall instant lands at the same local instant, read after
    read (to a few µs), and `d` ns later on the wall is `d` ns later here."""
    from llmtop.load.ray_workers import wall_to_local_ns

    wall = time.time_ns() + S
    a = [wall_to_local_ns(wall) for _ in range(20)]
    assert max(a) - min(a) < 200_000, max(a) - min(a)
    expected = time.perf_counter_ns() + (wall - time.time_ns())
    assert abs(a[0] - expected) < 5 * MS
    assert abs(wall_to_local_ns(wall + 7 * MS) - a[0] - 7 * MS) < 200_000
