"""SLO tiers in one search (issue 11) against a real server: the K-slot scripted server, a
tight `chat` tier and a loose `batch` one, short knobs (about a minute on two cores)."""

from __future__ import annotations

import json
from pathlib import Path

from llmtop.output.kneeplot import knee_figure
from llmtop.output.snapshot import load_snapshot
from tests.test_knee_run import TOKENS, kslot_url, run_knee_cli  # noqa: F401 (a fixture)

# TTFT is 20 ms while a slot is free; chat's 30 ms breaks once the queue forms (~60-70
# req/s on 8 slots of 56 ms), batch's 2 s holds up to the cap (80 req/s, rho 0.56).
CHAT, BATCH = "ttft_p99<=30ms", "ttft_p99<=2s"
MAX_RATE = 80


def test_two_tiers_in_one_search(kslot_url: str, tmp_path: Path) -> None:  # noqa: F811
    snap_path = tmp_path / "tiers.json"
    r = run_knee_cli(
        "--url",
        kslot_url,
        "--slo",
        f"chat: {CHAT}",
        "--slo",
        f"batch: {BATCH}",
        "--input-len",
        "16",
        "--output-len",
        str(TOKENS),
        "--start-rate",
        "20",
        "--max-rate",
        str(MAX_RATE),
        "--resolution",
        "20%",
        "--min-step-s",
        "1.5",
        "--max-step",
        "3s",
        "--confirm-s",
        "3",
        "--budget",
        "70",
        "--save",
        str(snap_path),
        json_path=tmp_path / "k.json",
        timeout=150,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    d = r.data
    knees = {k["tier"]: k for k in d["knees"]}
    assert list(knees) == ["chat", "batch"]
    chat, batch = knees["chat"], knees["batch"]
    print(
        f"chat {chat['rate']} ({chat['confidence']}), batch {batch['rate']} ({batch['confidence']})"
    )
    assert chat["slo"] == CHAT and batch["slo"] == BATCH
    assert chat["rate"] is not None and batch["rate"] is not None
    assert chat["rate"] <= batch["rate"] <= MAX_RATE, (chat, batch)
    assert chat["first_bad"] is not None and chat["first_bad"] > chat["rate"]  # chat broke
    # `knee` is the first tier's answer
    for key in ("tier", "value", "rate", "first_bad", "sustained", "output_throughput"):
        assert d["knee"][key] == chat[key], key
    assert d["knee"]["slo"] == CHAT
    # the steps say which tier each verdict is for
    judged = [s for s in d["steps"] if s.get("tiers")]
    assert {t for s in judged for t in s["tiers"]} == {"chat", "batch"}
    # the printed answer and the steps table name both tiers
    out = r.stdout
    assert "knee chat" in out and "knee batch" in out
    assert f"SLO {CHAT}" in out and f"SLO {BATCH}" in out
    assert "chat:good" in out and "batch:good" in out
    # the report's plot marks both knees and names each tier's limit
    snap = load_snapshot(snap_path)
    assert snap["knee"]["knees"] == json.loads(json.dumps(d["knees"]))
    fig = knee_figure([snap])
    (line,) = fig.lines
    assert [m.x for m in line.knees] == [chat["rate"], batch["rate"]]
    assert [m.text.split(" ")[1] for m in line.knees] == ["chat", "batch"]
    ttft = next(p for p in fig.panels if p.key == "ttft.p99")
    assert sorted(ttft.limits) == [(30.0, f"SLO chat: {CHAT}"), (2000.0, f"SLO batch: {BATCH}")]
