"""Trace replay: the schedule (fake clock), the file, the prompts, and a replay end to end.

The replay's timing bar (p99 arrival error <= 2 ms) is measured by benchmarks/trace_replay.py;
here the same replay is checked for exact lengths, nothing dropped, and offsets that follow
the trace (with a bound loose enough for a shared CI machine).
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from llmtop.backends.prompts import TRACE_BLOCK_TOKENS, TracePrompts
from llmtop.errors import ConfigError
from llmtop.load.arrivals import TraceSchedule
from llmtop.load.trace import load_trace, mean_rate, offsets_ns
from tests.conftest import assert_one_line_error, run_cli
from tests.support.scripted_server import Script, ScriptedServer

MS = 1_000_000


# -- the schedule -------------------------------------------------------------------------------


def test_trace_schedule_hands_out_the_trace_times() -> None:
    offs = [0, 10 * MS, 10 * MS, 25 * MS, 100 * MS]
    s = TraceSchedule(offs)
    t0 = 5_000 * MS
    s.start(t0)
    assert s.take_due(t0) == [t0]
    assert s.next_due_ns() == t0 + 10 * MS
    assert s.take_due(t0 + 24 * MS) == [t0 + 10 * MS, t0 + 10 * MS]  # a burst stays a burst
    assert s.take_due(t0 + 200 * MS) == [t0 + 25 * MS, t0 + 100 * MS]  # late: still its times
    assert s.exhausted and s.next_due_ns() is None and s.take_due(t0 + 10**12) == []


def test_trace_speed_and_live_rate_scale_the_rest_of_the_trace() -> None:
    offs = [i * 100 * MS for i in range(11)]  # 10 req/s over 1 s
    s = TraceSchedule(offs, speed=2.0)
    assert s.rate == pytest.approx(20.0)
    s.start(0)
    assert s.take_due(0) == [0]
    assert s.next_due_ns() == 50 * MS
    assert s.take_due(120 * MS) == [50 * MS, 100 * MS]
    # the arrow keys ask for 40 req/s at t = 120 ms: the trace is then at 240 ms of its time
    s.set_rate(120 * MS, 40.0)
    assert s.speed == pytest.approx(4.0) and s.rate == pytest.approx(40.0)
    assert s.next_due_ns() == 120 * MS + (300 - 240) * MS // 4


def test_trace_pause_keeps_the_gap_before_the_next_request() -> None:
    offs = [0, 100 * MS, 300 * MS]
    s = TraceSchedule(offs)
    s.start(0)
    s.take_due(150 * MS)
    s.pause()
    assert s.next_due_ns() is None and s.take_due(10**12) == []
    s.resume(1000 * MS)
    assert s.next_due_ns() == 1000 * MS + 200 * MS


def test_trace_schedule_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        TraceSchedule([0, 10], speed=0)
    with pytest.raises(ValueError):
        TraceSchedule([10, 0])
    s = TraceSchedule([0, 10])
    with pytest.raises(ValueError):
        s.set_rate(0, -1.0)


def test_trace_rate_zero_holds_and_inf_sends_the_rest_at_once() -> None:
    offs = [0, 100 * MS, 200 * MS, 300 * MS]
    s = TraceSchedule(offs)
    s.start(0)
    s.take_due(0)
    s.set_rate(50 * MS, 0.0)  # held where it is
    assert s.next_due_ns() is None and s.take_due(10**12) == []
    s.set_rate(1000 * MS, float("inf"))  # the rest, at once
    assert s.take_due(1000 * MS) == [1000 * MS] * 3 and s.exhausted


# -- the file -------------------------------------------------------------------------------------


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_load_trace_sorts_by_time_and_keeps_lengths(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "t.jsonl",
        [
            {"timestamp": 30, "input_length": 600, "output_length": 9, "hash_ids": [1, 2]},
            {"timestamp": 0, "input_length": 512, "output_length": 5, "hash_ids": [1]},
            {"timestamp": 30.5, "input_length": 10, "output_length": 2},
        ],
    )
    rows = load_trace(p)
    assert [r[0] for r in rows] == [0.0, 30.0, 30.5]
    assert rows[1] == (30.0, 600, 9, (1, 2))
    assert offsets_ns(rows) == [0, 30 * MS, 30_500_000]
    assert mean_rate(rows) == pytest.approx(2 / 0.0305)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("not json", "not JSON"),
        ('{"timestamp": 1, "input_length": 3}', "output_length"),
        ('{"timestamp": -1, "input_length": 3, "output_length": 1}', "timestamp"),
        ('{"timestamp": 0, "input_length": 0, "output_length": 1}', "input_length"),
        ('{"timestamp": 0, "input_length": 2, "output_length": 1, "hash_ids": ["a"]}', "hash_ids"),
    ],
)
def test_load_trace_errors_name_the_line(tmp_path: Path, line: str, needle: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 4, "output_length": 1}\n' + line + "\n")
    with pytest.raises(ConfigError, match=needle) as exc:
        load_trace(p)
    assert "bad.jsonl:2" in str(exc.value)


# -- the prompts ----------------------------------------------------------------------------------


def test_trace_prompts_share_exactly_the_blocks_their_hash_ids_share() -> None:
    tp = TracePrompts(100, 1000, seed=1)

    def ids(row: tuple) -> list[int]:
        return [int(x) for x in tp.token_ids(row).split(b",")]

    a = ids((0.0, 1100, 4, (7, 8, 9)))
    b = ids((1.0, 1024, 4, (7, 8)))
    c = ids((2.0, 700, 4, (7, 5)))
    d = ids((3.0, 1500, 4, (3,)))  # one block named: the rest is filler no one shares
    assert (len(a), len(b), len(c), len(d)) == (1100, 1024, 700, 1500)
    n = TRACE_BLOCK_TOKENS
    assert a[: 2 * n] == b[: 2 * n]  # blocks 7 and 8
    assert a[:n] == c[:n] and a[n:700] != c[n:700]  # block 7 only
    assert a[2 * n :] == ids((0.0, 1100, 4, (7, 8, 9)))[2 * n :]  # block 9, partial: same
    assert d[:n] != a[:n] and d[n:] != ids((3.0, 1500, 4, (3,)))[n:]  # filler is fresh
    assert all(100 <= t < 1000 for t in a + d)


# -- end to end -----------------------------------------------------------------------------------


def synthetic_trace(n: int, span_ms: float, seed: int = 0) -> list[dict]:
    """A Mooncake-like trace: bursts and gaps, lengths that vary, shared leading blocks."""
    rng = random.Random(seed)
    t = 0.0
    rows = []
    for i in range(n):
        if i and rng.random() > 0.2:  # one in five arrives with the one before it
            t += rng.expovariate(n / span_ms)
        n_in = rng.randint(40, 1800)
        blocks = -(-n_in // TRACE_BLOCK_TOKENS)
        root = rng.randint(0, 3)
        ids = [root * 100 + j for j in range(blocks)]
        rows.append(
            {
                "timestamp": round(t, 3),
                "input_length": n_in,
                "output_length": rng.randint(4, 12),
                "hash_ids": ids,
            }
        )
    return rows


def arrival_errors_ms(arrivals_ns: list[int], rows: list[dict]) -> list[float]:
    """|arrival − trace time − their median difference| per request, in ms, sorted."""
    diffs = [a - row["timestamp"] * MS for a, row in zip(arrivals_ns, rows, strict=True)]
    mid = sorted(diffs)[len(diffs) // 2]
    return sorted(abs(d - mid) / MS for d in diffs)


def test_replay_against_the_scripted_server(tmp_path: Path) -> None:
    rows = synthetic_trace(120, 2500.0, seed=5)
    path = _write(tmp_path / "trace.jsonl", rows)
    log = tmp_path / "requests.jsonl"
    srv = ScriptedServer(Script(ttft_ms=2.0, itl_ms=1.0)).start_in_thread()
    try:
        r = run_cli(
            "run", "--url", srv.url, "--trace", str(path), "--save-requests", str(log),
            json_path=tmp_path / "o.json",
        )  # fmt: skip
        arrivals = [a for a in srv.stats.arrivals if a[2] != 3]  # not the preflight's probe
    finally:
        srv.stop_thread()
    assert r.returncode == 0, r.stderr
    d = r.data
    assert d["completed"] == len(rows) and d["failed"] == 0  # nothing dropped
    assert len(arrivals) == len(rows)
    # exactly the trace's lengths
    want = Counter((row["input_length"], row["output_length"]) for row in rows)
    assert Counter((a[1], a[2]) for a in arrivals) == want
    assert d["prompt_tokens"] == sum(row["input_length"] for row in rows)
    # the schedule is the trace's: every intended send time at its offset, to the µs
    intended = sorted(json.loads(line)["intended_ms"] for line in log.read_text().splitlines())
    t0 = rows[0]["timestamp"]
    for ms, row in zip(intended, rows, strict=True):
        assert ms - intended[0] == pytest.approx(row["timestamp"] - t0, abs=0.002)
    # and the server saw them then: arrival − trace time is the same for every request, up
    # to the error (measured from its median: the first connection's set-up shifts no one).
    # The 2 ms p99 bar is benchmarks/trace_replay.py's, on pinned cores; here the typical
    # request must be on time even on a busy shared machine.
    errors_ms = arrival_errors_ms(sorted(a[0] for a in arrivals), rows)
    assert errors_ms[len(errors_ms) // 2] <= 5.0, errors_ms[len(errors_ms) // 2 :]
    assert d["workload"]["trace_requests"] == len(rows)
    assert d["config"]["plan"]["num_requests"] == len(rows)


def test_replay_a_prefix_of_the_trace_faster(tmp_path: Path) -> None:
    rows = synthetic_trace(40, 4000.0, seed=2)
    path = _write(tmp_path / "trace.jsonl", rows)
    srv = ScriptedServer(Script(ttft_ms=1.0, itl_ms=1.0)).start_in_thread()
    try:
        r = run_cli(
            "run", "--url", srv.url, "--trace", str(path), "--trace-speed", "4",
            "--num-requests", "20", json_path=tmp_path / "o.json",
        )  # fmt: skip
        got = sorted(a[0] for a in srv.stats.arrivals if a[2] != 3)
    finally:
        srv.stop_thread()
    assert r.returncode == 0, r.stderr
    assert r.data["completed"] == 20 and len(got) == 20
    # four times faster: each arrival at a quarter of its trace time (one shift for all)
    quarter = [{**row, "timestamp": row["timestamp"] / 4} for row in rows[:20]]
    errors_ms = arrival_errors_ms(got, quarter)
    assert errors_ms[len(errors_ms) // 2] <= 5.0, errors_ms
    span_s = (rows[19]["timestamp"] - rows[0]["timestamp"]) / 1000
    assert r.data["config"]["plan"]["request_rate"] == pytest.approx(19 / span_s * 4)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--concurrency", "2"], "--concurrency"),
        (["--request-rate", "5"], "--trace-speed"),
        (["--api", "chat"], "--api completions"),
        (["--turns", "2"], "--turns"),
        (["--duration", "3"], "--duration"),
    ],
)
def test_trace_conflicts_are_one_line_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    path = _write(tmp_path / "t.jsonl", synthetic_trace(3, 10.0))
    r = run_cli("run", "--url", "http://127.0.0.1:9", "--trace", str(path), *args)
    assert_one_line_error(r, needle)


def test_a_rate_change_while_paused_does_not_resume() -> None:
    s = TraceSchedule([0, 100 * MS, 200 * MS])
    s.start(0)
    s.take_due(0)
    s.pause()
    s.set_rate(10 * MS, 40.0)
    assert s.next_due_ns() is None
    s.resume(500 * MS)  # the gap to the next request, at the new speed (4×)
    assert s.next_due_ns() == 500 * MS + 25 * MS


def test_the_live_rate_control_scales_a_running_trace() -> None:
    """What the UI's arrow keys do: a new rate mid-replay speeds up the rest of the trace.

    Judged on the schedule's intended send times (the load process's own record of what it
    asked for), so a busy machine's late wake-ups do not decide the test.
    """
    from llmtop.config import LoadPlan, RunConfig, Target, Workload
    from llmtop.load.trace import parse_row
    from llmtop.metrics.records import RequestRecord
    from llmtop.session import LoadSession, drive
    from llmtop.setup import prepare

    rows = tuple(
        parse_row({"timestamp": 50 * i, "input_length": 32, "output_length": 4}, "row")
        for i in range(41)
    )  # 20 req/s for 2 s
    recs: list[RequestRecord] = []
    srv = ScriptedServer(Script(ttft_ms=1.0, itl_ms=1.0)).start_in_thread()
    try:
        config = RunConfig(
            Target(srv.url),
            Workload(trace="even.jsonl"),
            LoadPlan(request_rate=mean_rate(rows), num_requests=len(rows)),
            trace=rows,
        )
        with prepare(config) as prep:
            session = LoadSession(prep.config)
            session.record_sink = lambda rec, step: recs.append(rec)
            session.start()
            asked: list[float] = []

            def on_frame(frame: object) -> None:
                if not asked and len([a for a in srv.stats.arrivals if a[2] == 4]) >= 10:
                    session.set_rate(80.0)  # 4x the trace's own 20 req/s
                    asked.append(session.collector.steps[-1].start_ns)

            drive(session, on_frame)
        arrived = len([a for a in srv.stats.arrivals if a[2] == 4])
    finally:
        srv.stop_thread()
    assert asked and arrived == len(rows) and session.summary()["completed"] == len(rows)
    intended = sorted(r.intended_ns for r in recs)
    gaps_ms = [(b - a) / 1e6 for a, b in itertools.pairwise(intended)]
    before = [g for t, g in zip(intended[1:], gaps_ms, strict=True) if t < asked[0]]
    after = [g for t, g in zip(intended[1:], gaps_ms, strict=True) if t > asked[0] + 20e6]
    assert before and all(g == pytest.approx(50.0, abs=0.01) for g in before)
    assert len(after) > 20 and all(g == pytest.approx(12.5, abs=0.01) for g in after)
    assert session.collector.steps[-1].offered == 80.0
