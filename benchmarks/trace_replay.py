"""Trace replay timing: do requests reach the server at the trace's times, with its lengths?

A synthetic Mooncake-format trace (bursts: one request in five arrives with the one before
it; exponential gaps otherwise; prompt lengths 40–3000 tokens over shared 512-token blocks)
is replayed by `llmtop run --trace` against the scripted server, which stamps when it
received each request (`perf_counter_ns`, same clock as the client). The arrival error of a
request is (arrival − trace time) minus the median of that difference over all requests (a
constant shift — the first connection's set-up — is no error). Bar: p99 error <= 2 ms, every
request answered, every (input, output) length exactly the trace's.

    .venv/bin/python benchmarks/trace_replay.py [--requests 600] [--span-s 20] [--speed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))
from floor_client import (  # noqa: E402
    PRIORITIES,
    MachineLoad,
    ServerProcess,
    http_json,
    llmtop_command,
    run_child,
    wait_quiet,
)

MS = 1_000_000
BAR_P99_MS = 2.0


def synthetic_trace(n: int, span_ms: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    t = 0.0
    rows = []
    for i in range(n):
        if i and rng.random() > 0.2:
            t += rng.expovariate(n / span_ms)
        n_in = rng.randint(40, 3000)
        root = rng.randint(0, 7)
        ids = [root * 1000 + j for j in range(-(-n_in // 512))]
        rows.append(
            {"timestamp": round(t, 3), "input_length": n_in,
             "output_length": rng.randint(4, 32), "hash_ids": ids}
        )  # fmt: skip
    return rows


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--span-s", type=float, default=20.0)
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--priority", choices=PRIORITIES, default="nice")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--wait-quiet", type=float, default=0.0)
    ap.add_argument(
        "--llmtop-parent-nice",
        type=int,
        help="renice llmtop's parent once its load process runs (with --priority rt: 0)",
    )
    a = ap.parse_args()
    rows = synthetic_trace(a.requests, a.span_s * 1000, a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = Path(tmp) / "out.json"
        with ServerProcess(a.server_cpu, a.priority, ttft_ms=5.0, itl_ms=2.0) as srv:
            if a.wait_quiet:
                wait_quiet(a.wait_quiet)
            cmd = [*llmtop_command(), "run", "--url", srv.url, "--trace", str(path),
                   "--trace-speed", str(a.speed), "--json", str(out)]  # fmt: skip
            load = MachineLoad()
            cpu0 = srv.cpu_s()
            rc, err_text, client_cpu = run_child(
                cmd, a.client_cpu, 600, a.priority, a.llmtop_parent_nice
            )
            machine = load.report(client_cpu + srv.cpu_s() - cpu0)
            arrivals = [x for x in http_json(f"{srv.url}/script/arrivals")["arrivals"]
                        if x[2] != 3]  # not the preflight's probe  # fmt: skip
        if rc != 0:
            raise SystemExit(err_text)
        d = json.loads(out.read_text())
    got = sorted(x[0] for x in arrivals)
    diffs = [g - r["timestamp"] / a.speed * MS for g, r in zip(got, rows, strict=False)]
    mid = sorted(diffs)[len(diffs) // 2]
    err = [abs(x - mid) / MS for x in diffs]
    lengths_ok = Counter((x[1], x[2]) for x in arrivals) == Counter(
        (r["input_length"], r["output_length"]) for r in rows
    )
    dropped = len(rows) - d["completed"]
    p99 = pct(err, 99)
    ok = p99 <= BAR_P99_MS and lengths_ok and dropped == 0 and len(arrivals) == len(rows)
    print(f"trace: {len(rows)} requests over {rows[-1]['timestamp'] / 1000:.1f} s, "
          f"speed {a.speed:g}")  # fmt: skip
    print(f"arrival error ms: p50 {pct(err, 50):.3f}  p90 {pct(err, 90):.3f}  "
          f"p99 {p99:.3f}  max {max(err):.3f}   (bar p99 <= {BAR_P99_MS} ms)")  # fmt: skip
    print(f"client send slip ms: p50 {d['send_slip_ms']['p50']:.3f}  "
          f"p99 {d['send_slip_ms']['p99']:.3f}")  # fmt: skip
    print(f"lengths exact: {lengths_ok}   completed {d['completed']}   failed {d['failed']}   "
          f"dropped {dropped}   server saw {len(arrivals)}")  # fmt: skip
    print(f"machine (load1 / others CPU % / worst stall ms): {machine}")
    print("bar", "met" if ok else "MISSED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
