"""What a user types and reads (issue 16): one rule for flags that conflict or that another
flag makes meaningless, the same in every command; outputs that fit a pipeline; the
commands operators asked for. Real processes and real servers on loopback (the simulator, a
scripted aiohttp server, Python's own http.server for a server that is not an LLM API)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmtop.cli import cli
from llmtop.config import LoadPlan
from llmtop.engines.sweep import comparison_row, format_comparison
from llmtop.errors import ConfigError
from llmtop.output.snapshot import load_snapshot
from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.support.fault_server import Behaviour, FaultServer
from tests.support.tty import run_cli_tty

TINY = ["--input-len", "32", "--output-len", "4"]


def config_error(*args: str) -> str:
    """The one-line ConfigError a command raises for `args`, before it starts anything."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    assert isinstance(result.exception, ConfigError), (result.exception, result.output)
    message = str(result.exception)
    assert "\n" not in message
    return message


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"question number {i}", "output_len": 3} for i in range(4)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


# --- one rule, every command ------------------------------------------------------------------

LOAD_COMMANDS = (["run"], ["ui"], ["launch", "sim"])  # the commands that take the load flags
ALL_COMMANDS = (["run"], ["ui"], ["launch", "sim"], ["knee", "--slo", "ttft_p99<=1s"])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--concurrency", "2", "--request-rate", "5"], ["--concurrency", "--request-rate"]),
        (["--concurrency", "2", "--max-concurrency", "3"], ["--concurrency", "--max-concurrency"]),
        (["--duration", "5", "--num-requests", "5"], ["--duration", "--num-requests", "not both"]),
        (["--request-rate", "inf", "--duration", "5"], ["everything at once", "--num-requests"]),
    ],
)
def test_conflicting_load_flags_are_one_error_in_every_command(
    args: list[str], needles: list[str]
) -> None:
    messages = {" ".join(cmd): config_error(*cmd, *args) for cmd in LOAD_COMMANDS}
    assert len(set(messages.values())) == 1, messages  # word for word the same
    message = next(iter(messages.values()))
    for needle in needles:
        assert needle in message, message


def test_workload_conflicts_are_one_error_in_every_command() -> None:
    args = ["--shared-prefix-len", "500", "--input-len", "100"]
    messages = {" ".join(cmd): config_error(*cmd, *args) for cmd in ALL_COMMANDS}
    assert len(set(messages.values())) == 1, messages
    assert "--shared-prefix-len 500" in next(iter(messages.values()))
    assert "--input-len 100" in next(iter(messages.values()))


def test_a_profile_that_sets_both_loops_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "both.toml"
    p.write_text("[load]\nconcurrency = 2\nrequest_rate = 5.0\nnum_requests = 4\n")
    r = run_cli("run", "--profile", str(p))
    assert_one_line_error(r, "both.toml", "concurrency", "request_rate", "conflict")
    assert r.returncode == 2


def test_a_typed_flag_beats_the_profiles_other_loop(tmp_path: Path) -> None:
    """A profile's open loop gives way to a typed --concurrency (and the other way round)."""
    p = tmp_path / "rate.toml"
    p.write_text("[load]\nrequest_rate = 5.0\nnum_requests = 4\n")
    r = run_cli("run", "--profile", str(p), "--concurrency", "2", *TINY, json_path=tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert r.data["config"]["plan"]["concurrency"] == 2
    assert r.data["load"] == "closed loop, 2 concurrent"


def test_sim_tp_exists_and_errors_name_this_commands_flags(tmp_path: Path) -> None:
    for cmd in (["run"], ["ui"], ["knee", "--slo", "ttft_p99<=1s"]):
        message = config_error(*cmd, "--sim-model", "llama-3-70b")
        assert "raise --sim-tp" in message and "--sim-gpu" in message, message
        assert "--tp " not in message and "--gpu-memory-utilization" not in message
    assert "bad --sim-tp 3" in config_error("run", "--sim-model", "llama-3-70b", "--sim-tp", "3")
    assert "unknown --sim-gpu 'nope'" in config_error("run", "--sim-gpu", "nope")
    r = run_cli(
        "run", "--sim-model", "llama-3-70b", "--sim-tp", "2", "--num-requests", "2", *TINY,
        json_path=tmp_path / "o.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    sim = r.data["target"]["sim"]
    assert sim["model"] == "llama-3-70b" and sim["tp"] == 2
    assert "llama-3-70b on 2 × a100-80g" in r.stdout


def test_dataset_makes_length_flags_meaningless_noted_once(
    fault_server: FaultServer, dataset: Path, tmp_path: Path
) -> None:
    r = run_cli(
        "run", "--url", fault_server.url, "--api", "chat", "--dataset", str(dataset),
        "--input-len", "100", "--shared-prefix-len", "8", "--output-len", "9",
        "--num-requests", "4", json_path=tmp_path / "o.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    expected = [
        "--input-len ignored: prompts come from --dataset",
        "--shared-prefix-len ignored: prompts come from --dataset",
        "--output-len ignored: every prompt in --dataset gives its own output_len",
    ]
    for note in expected:
        assert r.stderr.count(note) == 1, r.stderr  # said once
        assert note in r.data["notes"]
    assert "chat template" not in r.stderr  # no synthetic chat prompts were sized
    w = r.data["workload"]
    assert w["input_len"] is None and w["shared_prefix_len"] == 0 and w["dataset_prompts"] == 4
    assert w["prompts_as"] == "chat messages"
    assert sorted(b["max_tokens"] for b in fault_server.requests[-4:]) == [3, 3, 3, 3]


def test_other_meaningless_flags_are_noted(fault_server: FaultServer, tmp_path: Path) -> None:
    r = run_cli(
        "run", "--url", fault_server.url, "--concurrency", "2", "--burstiness", "3",
        "--sim-gpu", "h200", "--num-requests", "4", *TINY, json_path=tmp_path / "o.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--burstiness ignored: a closed loop has no arrival process" in r.data["notes"]
    assert "--sim-gpu ignored: the simulator runs only without --url" in r.data["notes"]


def test_knee_and_the_ui_note_the_same_way(dataset: Path) -> None:
    note = "llmtop: note: --input-len ignored: prompts come from --dataset"
    # knee: the note comes before the search; stop it once seen
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtop", "knee", "--slo", "ttft_p99<=1s", "--dataset",
         str(dataset), "--input-len", "100", "--output-len", "4", "--min-step-s", "1",
         "--json", "-"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    while not any(line.startswith("knee: step 0 ") for line in seen):  # a step is measured
        seen.append(proc.stderr.readline())
        assert seen[-1], seen
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert note + "\n" in seen, seen
    assert proc.returncode == 130 and "Traceback" not in err
    assert json.loads(out)["steps"], out  # `--json -`: stdout is the JSON, the table on stderr
    assert "knee search" in err
    # the UI says it before it takes the terminal
    code, screen = run_cli_tty(
        "--dataset", str(dataset), "--input-len", "100", "--output-len", "4",
        "--request-rate", "2", "--exit-after", "1.5", timeout=90,
    )  # fmt: skip
    assert code == 0, screen[-2000:]
    assert screen.count(note) == 1, screen[-2000:]


# --- the commands operators asked for -------------------------------------------------------


def test_profiles_lists_workload_and_slo() -> None:
    r = run_cli("profiles")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["name", "workload", "load", "slo"]
    tpot = next(line for line in lines if line.startswith("llama3-8b-tpot-20ms"))
    assert "2048 in / 128 out" in tpot and "tpot_p99<=20ms" in tpot
    assert "1 req/s, 60 s" in next(ln for ln in lines if ln.startswith("llama3-8b-ttft-1s"))
    one = run_cli("profiles", "llama3-8b-2048-128", "--json")
    d = json.loads(one.stdout)
    assert d["name"] == "llama3-8b-2048-128" and d["load"] == "all at once, 1000 requests"


def test_launch_profile_and_the_simulator_as_engine(tmp_path: Path) -> None:
    """`launch sim --profile`: the profile's [engine] args and sweep, its load and SLO."""
    prof = tmp_path / "sweep.toml"
    prof.write_text(
        '[profile]\nname = "tiny-sweep"\n[workload]\ninput_len = 32\noutput_len = 4\n'
        '[load]\nconcurrency = 4\nnum_requests = 8\n[slo]\ntpot_p99 = "1s"\n'
        "[engine]\nargs = { max_batch_size = 64 }\nsweep = { max_batch_size = [1, 4] }\n"
    )
    out = tmp_path / "out"
    r = run_cli("launch", "sim", "--profile", str(prof), "--out", str(out), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    snaps = sorted(out.glob("sim-*.json"))
    assert [p.name for p in snaps] == ["sim-max-num-seqs=1.json", "sim-max-num-seqs=4.json"]
    one = load_snapshot(snaps[0])
    assert one["profile"]["name"] == "tiny-sweep" and one["slo"] == "tpot_p99<=1s"
    argv = one["sweep"]["argv"]
    assert argv[argv.index("--max-num-seqs") + 1] == "1"  # the sweep replaced the profile's 64
    assert one["summary"]["completed"] == 8 and one["engine"]["name"] == "llmtop-sim"
    assert "max-num-seqs=4" in r.stdout and "tiny-sweep" in r.stdout


def test_export_and_results_in_compare_and_report(tmp_path: Path) -> None:
    snap, res = tmp_path / "snap.json", tmp_path / "res.json"
    r = run_cli("run", "--num-requests", "6", *TINY, "--save", str(snap), json_path=res)
    assert r.returncode == 0, r.stderr
    # export a snapshot
    hlog, csv_path, jsonl = tmp_path / "hlog", tmp_path / "steps.csv", tmp_path / "series.jsonl"
    e = run_cli(
        "export", str(snap), "--hlog", str(hlog), "--csv", str(csv_path), "--jsonl", str(jsonl)
    )
    assert e.returncode == 0, e.stderr
    assert {p.name for p in hlog.iterdir()} >= {"ttft.hlog", "tpot.hlog", "e2el.hlog"}
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("step,label,offered") and len(rows) == 2
    series = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert series and all("t_s" in p for p in series)
    # export of a run --json result: the CSV, and a clear word for what it lacks
    e = run_cli("export", str(res), "--csv", "-")
    assert e.returncode == 0, e.stderr
    assert e.stdout.splitlines()[1].split(",")[1] == "whole run"
    assert_one_line_error(
        run_cli("export", str(res), "--hlog", str(tmp_path / "h")), "no histograms"
    )
    # compare and report take results beside snapshots
    c = run_cli("compare", str(res), str(snap), "--json")
    assert c.returncode == 0, c.stderr
    groups = json.loads(c.stdout)["groups"]
    assert len(groups) == 1 and len(groups[0]["snapshots"]) == 2
    ttft = next(row for row in groups[0]["rows"] if row["metric"] == "ttft_ms.p50")
    assert ttft["values"][0] == json.loads(res.read_text())["ttft_ms"]["p50"]
    pytest.importorskip("matplotlib")
    report = tmp_path / "report"
    rep = run_cli("report", str(res), str(snap), "-o", str(report), "--format", "svg")
    assert rep.returncode == 0, rep.stderr
    written = [p for p in report.rglob("*") if p.is_file()]
    assert f"wrote {len(written)} files" in rep.stderr, (rep.stderr, written)
    assert_one_line_error(run_cli("compare", str(tmp_path / "steps.csv")), "steps.csv")


def test_no_terminal_says_to_use_run() -> None:
    t0 = time.monotonic()
    r = run_cli("--num-requests", "3")
    assert_one_line_error(r, "needs a terminal", "llmtop run")
    assert r.returncode == 2 and time.monotonic() - t0 < 20  # nothing was started


def test_ui_help_shows_the_uis_own_defaults() -> None:
    r = run_cli("ui", "--help")
    text = " ".join(r.stdout.split())
    assert (
        "--request-rate RATE Open-loop req/s to start at (the arrows change it). [default: 1]"
        in text
    )
    assert "Default: 100 when no --duration" not in text and "until you quit" in text
    run_help = " ".join(run_cli("run", "--help").stdout.split())
    assert "[default: inf]" in run_help and "Default: 100 when no --duration" in run_help


# --- outputs that fit a pipeline --------------------------------------------------------------


def test_json_dash_is_stdout_and_the_table_goes_to_stderr(tmp_path: Path) -> None:
    r = run_cli("run", "--num-requests", "3", *TINY, "--json", "-", "--save", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)  # stdout is the JSON and nothing else
    assert data["completed"] == 3
    assert "TTFT" in r.stderr and "snapshot    " in r.stderr
    assert not (ROOT / "-").exists()


def test_client_cap_is_reported_as_the_bottleneck(tmp_path: Path) -> None:
    with FaultServer(plan=lambda i, b: Behaviour(ttft_s=0.05, itl_s=0.02)) as srv:
        r = run_cli(
            "run", "--url", srv.url, "--request-rate", "40", "--max-concurrency", "2",
            "--duration", "1.5", "--progress", "--input-len", "8", "--output-len", "10",
            json_path=tmp_path / "o.json",
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    b = r.data["bottleneck"]
    assert b["cause"] == "max_concurrency" and b["max_concurrency"] == 2
    assert b["queue_wait_p99_ms"] == r.data["queue_wait_ms"]["p99"]
    assert "the 1.5 s schedule took" in b["message"]
    assert "bottleneck  the client's --max-concurrency 2 was the bottleneck" in r.stdout
    assert "client-bound:" in r.stderr and "waiting for a --max-concurrency slot" in r.stderr
    # no cap, no word about one
    with FaultServer() as srv:
        ok = run_cli(
            "run", "--url", srv.url, "--num-requests", "4", *TINY, json_path=tmp_path / "n"
        )
    assert ok.data["bottleneck"] is None and "bottleneck" not in ok.stdout


def test_workload_shown_beside_the_figures(tmp_path: Path) -> None:
    r = run_cli(
        "run", "--profile", "llama3-8b-2048-128", "--num-requests", "3", "--input-len", "64",
        "--output-len", "4", json_path=tmp_path / "o.json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("workload"))
    assert "64 in / 4 out tokens, token-id prompts" in line
    assert "profile llama3-8b-2048-128" in line
    assert "load        open loop, all at once" in r.stdout and "inf (Poisson)" not in r.stdout
    d = r.data
    assert d["workload"]["text"] == "64 in / 4 out tokens, token-id prompts"
    assert d["workload"]["prompts_as"] == "token ids" and d["profile"]["name"]
    assert d["load"] == "open loop, all at once"


def test_load_descriptions() -> None:
    assert LoadPlan().describe() == "open loop, all at once"
    assert LoadPlan(max_concurrency=4).describe() == "open loop, all at once, max 4 in flight"
    assert LoadPlan(request_rate=5).describe() == "open loop, 5 req/s (Poisson arrivals)"
    assert "burstiness 0.5" in LoadPlan(request_rate=5, burstiness=0.5).describe()


def test_one_file_mode_for_every_output(tmp_path: Path) -> None:
    """--json, --save, --save-requests and export files all get the umask's mode."""
    files = {n: tmp_path / n for n in ("o.json", "s.json", "r.jsonl", "x.csv", "x.jsonl")}
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}

    def llmtop(*args: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "llmtop", *args], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=120, preexec_fn=lambda: os.umask(0o027),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    llmtop(
        "run", "--num-requests", "3", *TINY, "--json", str(files["o.json"]),
        "--save", str(files["s.json"]), "--save-requests", str(files["r.jsonl"]),
    )  # fmt: skip
    llmtop("export", str(files["s.json"]), "--csv", str(files["x.csv"]), "--jsonl",
           str(files["x.jsonl"]), "--hlog", str(tmp_path / "h"))  # fmt: skip
    outputs = [*files.values(), *(tmp_path / "h").iterdir()]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in outputs}
    assert set(modes.values()) == {0o640}, modes


# --- words ------------------------------------------------------------------------------------


def test_cli_error_wording() -> None:
    message = run_cli("run", "--input-len", "uniform:9").stderr
    assert "uniform:MIN:MAX" in message and "table" not in message and "dist =" not in message
    r = run_cli("run", "--profile", "./missing.toml")
    assert_one_line_error(r, "missing.toml: no such file")
    assert "no such profile" not in r.stderr
    assert "at most 100%" in config_error("run", "--slo", "error_rate<=150%")
    assert "at most 100%" in config_error("knee", "--slo", "error_rate<=1.5")


@pytest.fixture
def web_server() -> Iterator[str]:
    """Python's own http.server: a web server that is not an LLM API (HTML error pages)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_html_error_page_is_summarised(web_server: str) -> None:
    r = run_cli("run", "--url", web_server, "--num-requests", "1")
    assert_one_line_error(r, "/v1/models", "HTTP 404", "an HTML page ('Error response')")
    assert "<" not in r.stderr and "OpenAI-compatible" in r.stderr
    r = run_cli("run", "--url", web_server, "--model", "m", "--num-requests", "1")
    assert_one_line_error(r, "HTTP 501", "an HTML page ('Error response'), not an LLM API")
    assert "<" not in r.stderr


# --- the sweep table --------------------------------------------------------------------------


def test_sweep_table_aligns_and_says_when_the_server_was_not_scraped() -> None:
    summary = {"completed": 12, "failed": 0, "request_throughput": 2.5, "output_throughput": 80.0}
    series = [
        {"t_ns": 100, "running": 0, "waiting": 0},  # before the load
        {"t_ns": 900, "running": 0, "waiting": 0},  # after it
    ]
    short = comparison_row("a=1", {"summary": summary, "server_series": series}, (200, 800))
    assert short["server_running_max"] is None  # no scrape while the load ran: "-", not 0
    during = [*series, {"t_ns": 500, "running": 7, "waiting": 3}]
    long_name = "max-num-seqs=256,max-num-batched-tokens=16384,gpu-memory-utilization=0.95"
    row = comparison_row(long_name, {"summary": summary, "server_series": during}, (200, 800))
    assert row["server_running_max"] == 7
    table = format_comparison([short, row, {"config": "x=0", "error": "OOM"}])
    lines = [ln for ln in table.splitlines() if ln.strip()][1:]
    head, rows = lines[0], [ln for ln in lines[2:] if "failed" not in ln]
    assert all(len(r) == len(head) for r in rows), table  # every column lines up
    for r in rows:  # the last cells end where the header's do
        assert r.rstrip().endswith(("-", "3")) and len(r.rstrip()) == len(head.rstrip())
    assert rows[0].split()[-2:] == ["-", "-"]
    assert "x=0" in table and "failed: OOM" in table


# --- the UI's words fit its boxes -------------------------------------------------------------


def test_rate_dialog_and_event_log_show_whole_lines() -> None:
    import asyncio
    import dataclasses

    from textual.widgets import Label

    from llmtop.tui.app import create_app
    from llmtop.tui.demo import demo_info
    from llmtop.tui.widgets.event_log import EventLog
    from llmtop.tui.widgets.rate_input import RateInputScreen

    long_event = "SLO breached: " + " ".join(f"word{i}" for i in range(40))

    async def scenario() -> None:
        info = dataclasses.replace(demo_info(), closed_loop=True)  # the longer prompt
        app = create_app(info)
        async with app.run_test(size=(80, 24)) as pilot:
            log = app.query_one(EventLog)
            log.event(3.0, long_event)
            await pilot.pause()
            width = log.scrollable_content_region.width
            rendered = [strip.text.rstrip() for strip in log.lines]
            assert all(len(line) <= width for line in rendered), rendered
            assert " ".join(" ".join(rendered).split()).endswith("word39")  # nothing cut off
            await pilot.press("equals_sign")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, RateInputScreen)
            for label in screen.query(Label):
                text = str(label.render())
                if text:
                    assert label.size.width >= len(text), (text, label.size)
            shown = " ".join(str(lb.render()) for lb in screen.query(Label))
            assert "Esc cancels" in shown and "requests in flight" in shown

    asyncio.run(scenario())
