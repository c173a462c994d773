"""Conversations (multi-turn workloads) split over `--workers` (issue 13, docs/scale.md).

Against the workload server on loopback (it keeps every request body and the exact text it
answered), through the real CLI: a conversation lives in one worker (its turns in order,
each carrying its own history), the group starts the conversations one process would (the
dataset's, each once), and the per-turn figures of all workers are merged.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import run_cli
from tests.support.workload_server import WorkloadServer

OUT = 6  # output tokens per turn: the load's requests (the preflight probe asks for 3)


def check_conversations(srv: WorkloadServer, d: dict[str, Any], convs: int, turns: int) -> None:
    """Every conversation whole, in order, with its own history; by_turn merged."""
    reqs = [(i, b) for i, b in enumerate(srv.requests) if b.get("max_tokens") == OUT]
    sizes = Counter(len(b["messages"]) for _, b in reqs)
    assert sizes == {2 * t + 1: convs for t in range(turns)}, sizes
    by_msgs = {json.dumps(b["messages"]): i for i, b in reqs}
    for i, b in reqs:
        m = b["messages"]
        if len(m) == 1:
            continue
        # the history is this conversation's: the server's actual answers, byte for byte
        for j in range(1, len(m), 2):
            assert m[j]["content"] == srv.answers[by_msgs[json.dumps(m[:j])]]
        # and turn k+1 went after turn k had ended
        before = by_msgs[json.dumps(m[:-2])]
        assert srv.spans[i][0] >= srv.spans[before][1] - 0.002
    assert d["completed"] == convs * turns and d["failed"] == 0
    assert {k: v["completed"] for k, v in d["by_turn"].items()} == {
        str(t + 1): convs for t in range(turns)
    }
    for t in range(turns):
        assert d["by_turn"][str(t + 1)]["ttft_ms"]["count"] == convs
    # a conversation stays in one worker: each worker completed whole conversations
    done = [w["completed"] for w in d["workers"]]
    assert sum(done) == convs * turns and all(n % turns == 0 for n in done), done


def _run(srv: WorkloadServer, tmp_path: Path, *args: str) -> dict[str, Any]:
    r = run_cli(
        "run", "--url", srv.url, "--api", "chat", "--output-len", str(OUT),
        "--no-progress", *args, json_path=tmp_path / "o.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.data


def test_two_workers_keep_each_conversation_whole_and_merge_by_turn(tmp_path: Path) -> None:
    with WorkloadServer() as srv:
        d = _run(
            srv, tmp_path, "--turns", "3", "--think-time", "0.01", "--input-len", "40",
            "--num-requests", "8", "--request-rate", "40", "--workers", "2",
        )  # fmt: skip
        check_conversations(srv, d, convs=8, turns=3)
        assert [w["completed"] for w in d["workers"]] == [12, 12]  # 4 conversations each


def _dataset(tmp_path: Path, n: int) -> Path:
    """n two-turn conversations whose user messages say which one they are."""
    rows = [
        {"conversations": [
            {"from": "human", "value": f"conv {c} turn one"}, {"from": "gpt", "value": "x" * 24},
            {"from": "human", "value": f"conv {c} turn two"}, {"from": "gpt", "value": "y" * 24},
        ]}
        for c in range(n)
    ]  # fmt: skip
    path = tmp_path / "convs.json"
    path.write_text(json.dumps(rows))
    return path


def _users(srv: WorkloadServer) -> list[str]:
    return sorted(b["messages"][-1]["content"] for b in srv.requests if b.get("max_tokens") == OUT)


def test_the_workers_start_the_conversations_one_process_would(tmp_path: Path) -> None:
    """Dataset conversation k is the group's k-th, whichever worker starts it: the union is
    the one process's (each once), in the open and in the closed loop."""
    data = _dataset(tmp_path, 6)
    common = ["--dataset", str(data), "--turns", "all", "--think-time", "0"]
    runs: dict[str, list[str]] = {}
    for name, flags in {
        "one": ["--request-rate", "50", "--num-requests", "5"],
        "open": ["--request-rate", "50", "--num-requests", "5", "--workers", "2"],
        "closed": ["--concurrency", "2", "--num-requests", "5", "--workers", "2"],
    }.items():
        with WorkloadServer() as srv:
            d = _run(srv, tmp_path, *common, *flags)
            runs[name] = _users(srv)
            assert d["completed"] == 10 and d["by_turn"]["2"]["completed"] == 5, name
    expected = sorted(f"conv {c} turn {t}" for c in range(5) for t in ("one", "two"))
    assert runs["one"] == expected
    assert runs["open"] == expected and runs["closed"] == expected
