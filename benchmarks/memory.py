"""Memory: does llmtop's RSS stay flat over a long run?

Why: a load tester that keeps a list per request (or per token) grows without bound and, on
a long soak test, ends up measuring its own garbage collector. We run ``llmtop run`` for a
while (default 120 s at 100 req/s, 16-token outputs) against the scripted server and sample
the RSS of llmtop's processes (the parent and every child, via psutil) every few seconds.
The first ~30 s are start-up (imports, connection pool, histogram buckets touched for the
first time); growth is measured from there to the end.

Bar: flat — growth from 30 s to the end within ``--max-growth-mb`` (default 2 MB in total).

    python benchmarks/memory.py --duration 120 --rate 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor_client import PRIORITIES, ROOT, ServerProcess, llmtop_command, pin


def rss_tree(proc: psutil.Process) -> tuple[int, int, int]:
    """(parent RSS, children RSS, number of children) in bytes."""
    try:
        parent = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, 0
    child = 0
    for k in kids:
        with contextlib.suppress(psutil.NoSuchProcess):
            child += k.memory_info().rss
    return parent, child, len(kids)


def main(argv: list[str] | None = None) -> None:
    """CLI entry."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--from-s", type=float, default=30.0, help="growth is measured from here")
    p.add_argument("--max-growth-mb", type=float, default=2.0)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument(
        "--priority",
        choices=PRIORITIES,
        default="nice",
        help="server and client priority (nice: -20; rt: SCHED_FIFO), against noisy neighbours",
    )
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    samples: list[dict[str, Any]] = []
    with (
        ServerProcess(cpu=a.server_cpu, priority=a.priority, ttft_ms=20, itl_ms=5) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        out = Path(tmp) / "result.json"
        cmd = [
            *llmtop_command(),
            "run",
            "--url",
            server.url,
            "--request-rate",
            str(a.rate),
            "--duration",
            str(a.duration),
            "--output-len",
            str(a.output_len),
            "--input-len",
            "32",
            "--json",
            str(out),
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            preexec_fn=pin(a.client_cpu, a.priority),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        ps = psutil.Process(proc.pid)
        t0 = time.monotonic()
        while proc.poll() is None:
            t = time.monotonic() - t0
            parent, child, n = rss_tree(ps)
            if parent:
                samples.append(
                    {
                        "t_s": round(t, 1),
                        "parent_mb": parent / 2**20,
                        "children_mb": child / 2**20,
                        "children": n,
                        "total_mb": (parent + child) / 2**20,
                    }
                )
                print(
                    f"  t={t:6.1f}s  parent {parent / 2**20:7.1f} MB  children({n}) "
                    f"{child / 2**20:7.1f} MB  total {(parent + child) / 2**20:7.1f} MB",
                    file=sys.stderr,
                )
            time.sleep(a.interval)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        result = json.loads(out.read_text()) if out.exists() else None
    if result is None:
        print(f"llmtop failed (rc {proc.returncode}): {err[-2000:]}")
        sys.exit(1)
    print(
        f"llmtop run at {a.rate:g} req/s for {a.duration:g} s, {a.output_len}-token outputs: "
        f"{result.get('completed')} completed, {result.get('failed')} failed\n"
    )
    print("| t s | parent MB | children MB | total MB |\n|---|---|---|---|")
    for s in samples:
        print(
            f"| {s['t_s']:.0f} | {s['parent_mb']:.1f} | {s['children_mb']:.1f} "
            f"| {s['total_mb']:.1f} |"
        )
    late = [s for s in samples if s["t_s"] >= a.from_s and s["children"] > 0]
    if len(late) >= 2:
        growth = late[-1]["total_mb"] - late[0]["total_mb"]
        span = late[-1]["t_s"] - late[0]["t_s"]
        peak = max(s["total_mb"] for s in late) - late[0]["total_mb"]
        print(
            f"\ngrowth from {late[0]['t_s']:.0f} s to {late[-1]['t_s']:.0f} s: {growth:+.2f} MB "
            f"({growth / span * 60:+.2f} MB/min; peak {peak:+.2f} MB); bar <= "
            f"{a.max_growth_mb} MB: {'PASS' if growth <= a.max_growth_mb else 'FAIL'}"
        )
    else:
        print("\nrun too short to measure growth")
    if a.json:
        Path(a.json).write_text(json.dumps({"samples": samples, "result": result}, indent=2))


if __name__ == "__main__":
    main()
