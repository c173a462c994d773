"""How many tokens/s the simulator emits on one core, and how late its writes are.

The server runs in a child process pinned to CPU 0; this process (the client) is pinned to
CPU 1 and keeps `--concurrency` streams open with a raw asyncio client that only counts SSE
events, so the client is not what limits the figure. After a warm-up the server's own
lateness histogram (write time minus the step end the model scheduled) is reset, and after
`--seconds` it is read from /sim/stats.

    .venv/bin/python benchmarks/sim_throughput.py --engine trtllm --gpu h200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.request

MODEL = ["llama-3.2-1b"]


class _Stream(asyncio.Protocol):
    """One keep-alive connection that re-sends a streaming completion whenever one ends."""

    def __init__(self, requests: list[bytes], counter: list[int]) -> None:
        self.requests = requests
        self.request = requests[0]
        self.counter = counter
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(self._next())

    def _next(self) -> bytes:
        """Requests of varied lengths, so streams do not finish (and re-send) in lockstep."""
        self.requests.append(self.requests.pop(0))
        return self.requests[0]

    def data_received(self, data: bytes) -> None:
        buf = self.tail + data
        self.counter[0] += buf.count(b'data: {"id"')
        if buf.endswith(b"0\r\n\r\n") and b"data: [DONE]" in buf[-40:]:
            self.counter[1] += 1
            self.tail = b""
            assert self.transport is not None
            self.transport.write(self._next())
        else:
            self.tail = buf[-16:]


def _http(url: str, method: str = "GET") -> dict[str, object]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


async def _drive(
    host: str, port: int, concurrency: int, max_tokens: int, warmup: float, seconds: float, url: str
) -> dict[str, float]:
    rng = random.Random(1)
    counter = [0, 0]
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(concurrency):
        reqs = []
        for _ in range(8):
            n = rng.randint(max_tokens // 2, max_tokens * 3 // 2)
            body = json.dumps(
                {
                    "model": MODEL[0],
                    "prompt": list(range(1, 33)),
                    "max_tokens": n,
                    "ignore_eos": True,
                    "stream": True,
                }
            ).encode()
            head = (
                b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
            )
            reqs.append(head % len(body) + body)
        t, _p = await loop.create_connection(lambda r=reqs: _Stream(r, counter), host, port)
        conns.append(t)
    await asyncio.sleep(warmup)
    await loop.run_in_executor(None, _http, url + "/sim/reset", "POST")
    c0, t0, cpu0 = counter[0], time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    c1, t1, cpu1 = counter[0], time.perf_counter(), time.process_time()
    stats = await loop.run_in_executor(None, _http, url + "/sim/stats")
    for t in conns:
        t.close()
    return {"client_tok_s": (c1 - c0) / (t1 - t0), "client_cpu": (cpu1 - cpu0) / (t1 - t0), **stats}  # type: ignore[dict-item]


def _pin_server(cpus: set[int], nice: int, realtime: bool) -> None:
    """In the server child: pin it, and optionally raise its priority above other tenants."""
    os.sched_setaffinity(0, cpus)
    if nice:
        os.nice(nice)
    if realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="trtllm")
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--concurrency", type=int, default=80)
    ap.add_argument("--max-num-seqs", type=int, default=80)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--event-loop", default="auto")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness increment for the server (negative needs root): on a shared "
        "machine, separates the sim's own lateness from other processes taking its CPU",
    )
    ap.add_argument(
        "--realtime",
        action="store_true",
        help="run the server SCHED_FIFO (needs root): no other process can preempt it, so "
        "the figures are the sim's own on a busy shared machine",
    )
    a = ap.parse_args()
    MODEL[0] = a.model
    ncpu = len(os.sched_getaffinity(0))
    server_cpu, client_cpu = ({0}, {1}) if ncpu >= 2 else ({0}, {0})
    cmd = [
        sys.executable,
        "-m",
        "llmtop.sim",
        "--port",
        "0",
        "--engine",
        a.engine,
        "--gpu",
        a.gpu,
        "--model",
        a.model,
        "--max-num-seqs",
        str(a.max_num_seqs),
        "--event-loop",
        a.event_loop,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: _pin_server(server_cpu, a.nice, a.realtime),
    )
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        os.sched_setaffinity(0, client_cpu)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        r = run(_drive(host, int(port), a.concurrency, a.max_tokens, a.warmup, a.seconds, url))
        server_cpu_s = None
        preempted = -1
        try:
            import psutil

            ps = psutil.Process(proc.pid)
            server_cpu_s = sum(ps.cpu_times()[:2])
            # Involuntary switches: times another process took the server's CPU away.
            preempted = ps.num_ctx_switches().involuntary
        except Exception:
            pass
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(
        f"sim {a.engine}/{a.gpu}/{a.model} max-num-seqs {a.max_num_seqs}, {a.concurrency} streams, "
        f"{a.max_tokens // 2}-{a.max_tokens * 3 // 2} tokens each, "
        f"server on CPU {sorted(server_cpu)}, "
        f"loop {a.event_loop}, nice {a.nice:+d}{', SCHED_FIFO' if a.realtime else ''}"
    )
    print(
        f"  server emitted   {r['tokens_emitted'] / r['seconds']:10.0f} tokens/s "
        f"({r['iterations']} iterations in total)"
    )
    print(
        f"  client received  {r['client_tok_s']:10.0f} tokens/s (client CPU {r['client_cpu']:.0%})"
    )
    print(
        f"  lateness p50 {r['lateness_p50_ms']:.3f} ms  p99 {r['lateness_p99_ms']:.3f} ms  "
        f"p99.9 {r['lateness_p999_ms']:.3f} ms  max {r['lateness_max_ms']:.3f} ms "
        f"({r['lateness_samples']} writes)"
    )
    print(
        f"  step wake-up lateness p50 {r['wake_lateness_p50_ms']:.3f} ms  "
        f"p99 {r['wake_lateness_p99_ms']:.3f} ms (timer precision, before any write)"
    )
    if server_cpu_s is not None:
        print(
            f"  server CPU time  {server_cpu_s:.1f} s over the whole run, "
            f"{preempted} involuntary context switches (other processes on its CPU)"
        )


if __name__ == "__main__":
    main()
