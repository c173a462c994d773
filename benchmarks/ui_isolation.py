"""The isolation bar: TTFT and ITL errors with the live UI open stay within 0.5 ms of headless.

Why: the UI renders in its own process and must not disturb the load process's timestamps.
Against the scripted server (TTFT 50 ms, one token every 10 ms, 200 tokens; pinned to core
0) we run the same open-loop Poisson load twice with the client pinned to core 1: once
headless (`llmtop run --json`) and once with the UI open in a real terminal (tmux, 120×40,
`--save` a snapshot on quit via the hidden `--exit-after`). Each run's TTFT / ITL minus the
server's own record is its error; the bar is |error(UI) − error(headless)| <= 0.5 ms.

    python benchmarks/ui_isolation.py --rate 98 --duration 20 --warmup 3

`LLMTOP_CMD` overrides the command that runs llmtop (default: `python -m llmtop`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor_client import ROOT, MachineLoad, ServerProcess, errors_vs_server, run_child

BAR_MS = 0.5
KEYS = ("ttft_p50", "ttft_p99", "itl_p50", "itl_p99")


def llmtop() -> list[str]:
    return shlex.split(os.environ.get("LLMTOP_CMD", "")) or [sys.executable, "-m", "llmtop"]


def load_args(url: str, a: argparse.Namespace) -> list[str]:
    return [
        "--url", url, "--request-rate", str(a.rate), "--duration", str(a.duration),
        "--warmup", str(a.warmup), "--output-len", str(a.output_len),
        "--input-len", str(a.input_len),
    ]  # fmt: skip


def headless(server: ServerProcess, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out = tmp / "headless.json"
    server.arm(a.warmup, a.duration, a.output_len)
    load = MachineLoad()
    cmd = [*llmtop(), "run", *load_args(server.url, a), "--json", str(out), "--no-progress"]
    rc, err, cpu = run_child(cmd, a.client_cpu, a.warmup + a.duration + 120)
    if rc != 0:
        raise SystemExit(f"headless run failed (rc {rc}): {err}")
    res = json.loads(out.read_text())
    return {
        "errors": errors_vs_server(res, server.stats()),
        "result": res,
        "machine": load.report(cpu),
    }


def with_ui(server: ServerProcess, a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    snap, rc_file = tmp / "ui-snapshot.json", tmp / "ui.rc"
    server.arm(a.warmup, a.duration, a.output_len)
    exit_after = a.warmup + a.duration + 4
    ui = [
        *llmtop(),
        *load_args(server.url, a),
        "--save",
        str(snap),
        "--exit-after",
        str(exit_after),
    ]
    pin = ["taskset", "-c", str(a.client_cpu)] if a.client_cpu is not None else []
    shell = f"cd {shlex.quote(str(ROOT))} && {shlex.join(pin + ui)}; echo $? > {rc_file}"
    session = f"llmtop-iso-{os.getpid()}"
    load = MachineLoad()
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", shell], check=True
    )
    deadline = time.monotonic() + exit_after + 120
    try:
        while not rc_file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    machine = load.report(0.0)
    if not rc_file.exists() or rc_file.read_text().strip() != "0" or not snap.exists():
        raise SystemExit("the UI run did not end cleanly with a snapshot")
    res = json.loads(snap.read_text())["summary"]
    return {"errors": errors_vs_server(res, server.stats()), "result": res, "machine": machine}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=196.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--output-len", type=int, default=200)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1, help="-1: do not pin the client")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    if a.client_cpu is not None and a.client_cpu < 0:
        a.client_cpu = None  # -1: let the kernel place the client (and the UI) anywhere
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed to open the UI in a real terminal")
    print(f"load1 before: {os.getloadavg()[0]:.2f}, cores: {os.cpu_count()}")
    with (
        ServerProcess(a.server_cpu, ttft_ms=50, itl_ms=10) as server,
        tempfile.TemporaryDirectory() as t,
    ):
        rows = {"headless": headless(server, a, Path(t)), "ui": with_ui(server, a, Path(t))}
    print(f"rate {a.rate:g} req/s, {a.duration:g} s measured; error = client − server (ms)")
    print(f"{'':10}" + "".join(f"{k:>11}" for k in KEYS) + "   completed   load1  others CPU %")
    for name, r in rows.items():
        e, m = r["errors"], r["machine"]
        cells = "".join(f"{e[k]:>+11.3f}" if e[k] is not None else f"{'—':>11}" for k in KEYS)
        done = r["result"]["completed"]
        print(f"{name:10}{cells}   {done:>9}   {m['load1_before']:>5}  {m['others_cpu_pct']:>6}")
    ok = True
    for k in KEYS:
        h, u = rows["headless"]["errors"][k], rows["ui"]["errors"][k]
        d = None if h is None or u is None else u - h
        good = d is not None and abs(d) <= BAR_MS
        ok &= good
        print(f"{k}: UI − headless = {d:+.3f} ms (bar ±{BAR_MS}): {'PASS' if good else 'FAIL'}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows, "pass": ok}, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
