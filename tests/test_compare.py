"""`llmtop compare`: rows, ratios to the first snapshot, the better value, grouping, --json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from llmtop.output.compare import compare_snapshots, render
from llmtop.output.snapshot import load_snapshot, save_snapshot
from tests.test_snapshot import FIXTURES, run_cli

V1 = FIXTURES / "v1-sim-vllm-128-128.json"
V0 = FIXTURES / "v0-trtllm-128-128.json"


def _row(data: dict[str, Any], metric: str, group: int = 0) -> dict[str, Any]:
    return next(r for r in data["groups"][group]["rows"] if r["metric"] == metric)


def test_ratio_and_better_value() -> None:
    a, b = load_snapshot(V1), load_snapshot(V0)
    data = compare_snapshots([a, b])
    assert len(data["groups"]) == 1 and data["groups"][0]["workload"] == "128 in / 128 out"
    thr = _row(data, "output_throughput")
    assert thr["ratios"][0] == 1.0
    assert thr["ratios"][1] == b["summary"]["output_throughput"] / a["summary"]["output_throughput"]
    assert thr["best"] == (1 if thr["values"][1] > thr["values"][0] else 0)  # higher is better
    ttft = _row(data, "ttft_ms.p99")
    assert ttft["best"] == (1 if ttft["values"][1] < ttft["values"][0] else 0)  # lower is better
    assert _row(data, "completed")["best"] is None  # information only
    assert not any(r["metric"].startswith("knee") for r in data["groups"][0]["rows"])


def test_groups_by_workload_and_shows_the_knee(tmp_path: Path) -> None:
    a = load_snapshot(V1)
    c = copy.deepcopy(a)
    c["workload"]["input_len"] = 2048
    c["label"] = "other"
    c["knee"] = {"rate": 5.5, "output_throughput": 700.0, "goodput": 5.0}
    data = compare_snapshots([a, c])
    assert [g["workload"] for g in data["groups"]] == ["128 in / 128 out", "2048 in / 128 out"]
    assert _row(data, "knee.rate", 1)["values"] == [5.5]


def test_render_plain_marks_better_and_terminal_styles() -> None:
    data = compare_snapshots([load_snapshot(V1), load_snapshot(V0)])
    plain = render(data, color=False)
    assert "\x1b[" not in plain and " * " in plain + " " and "× first" in plain
    assert "TTFT p99" in plain and "vllm llama3-8b-128-128" in plain
    styled = render(data, color=True)
    assert "\x1b[" in styled


def test_cli_table_and_json(tmp_path: Path) -> None:
    r = run_cli("compare", str(V1), str(V0))
    assert r.returncode == 0, r.stderr
    assert "Workload: 128 in / 128 out" in r.stdout and "\x1b[" not in r.stdout  # piped: plain
    assert "trtllm 128/128 (v0 layout)" in r.stdout
    r = run_cli("compare", "--json", str(V1), str(V0))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    names = [s["name"] for s in data["groups"][0]["snapshots"]]
    assert names == ["vllm llama3-8b-128-128", "trtllm 128/128 (v0 layout)"]
    # same label twice: told apart by file name
    dup = save_snapshot(tmp_path / "again.json", load_snapshot(V1))
    data = json.loads(run_cli("compare", "--json", str(V1), str(dup)).stdout)
    names = [s["name"] for s in data["groups"][0]["snapshots"]]
    assert len(set(names)) == 2 and "again" in names[1]


def test_knee_rate_and_concurrency_are_separate_rows() -> None:
    a = load_snapshot(V1)
    rate, conc, old = (copy.deepcopy(a) for _ in range(3))
    rate["knee"] = {"mode": "rate", "value": 12.5, "rate": 12.5, "concurrency": None}
    conc["knee"] = {"mode": "concurrency", "value": 24.0, "rate": None, "concurrency": 24.0}
    old["knee"] = {"knee": {"value": 7.0}}  # nested, before issue 11: a rate
    for s, label in ((rate, "r"), (conc, "c"), (old, "o")):
        s["label"] = label
    data = compare_snapshots([rate, conc, old])
    knee_rate = _row(data, "knee.rate")
    assert knee_rate["values"] == [12.5, None, 7.0] and knee_rate["unit"] == "req/s"
    assert knee_rate["ratios"] == [1.0, None, 7.0 / 12.5]
    assert _row(data, "knee.concurrency")["values"] == [None, 24.0, None]
