"""Issue 15's bars, measured: energy per token against a steady exporter, and the server's
own latency split against the client's (simulator; a real vLLM CPU build with --vllm).

1. A stand-in dcgm-exporter (a real aiohttp server from tests/test_gpu.py) draws a steady
   300 W over two GPUs at 80 % utilisation while `llmtop run` loads a loopback streaming
   server; the run's `energy_j_per_output_token` must be within 10 % of
   300 W x measured duration / output tokens and its mean utilisation 80, both ways
   (energy counter, and integrated power when the exporter has no counter).
2. The built-in simulator (--max-num-seqs 4): at 2 req/s the server's TTFT p50 equals the
   client's within the bucket it fell in; at 40 req/s (overload) the queue takes over the
   server's TTFT while prefill stays flat.
3. With --vllm, a real vLLM (CPU build, tiny random-weight Llama): server TTFT p50 vs client.

    python benchmarks/observability.py [--vllm]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fault_server import FaultServer  # noqa: E402
from tests.test_gpu import StandInDcgm  # noqa: E402


def run(args: list[str], out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "llmtop", "run", *args, "--json", str(out), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"llmtop run failed: {r.stderr.strip()[-500:]}")
    return json.loads(out.read_text())


def energy(tmp: Path) -> None:
    print("== energy per output token: stand-in dcgm-exporter, 300 W over 2 GPUs at 80 %")
    for counter in (True, False):
        with FaultServer() as srv, StandInDcgm(300.0, 80.0, 2, counter=counter) as dcgm:
            d = run(
                [
                    "--url", srv.url, "--gpu-metrics", dcgm.url, "--duration", "8",
                    "--request-rate", "20", "--input-len", "16", "--output-len", "16",
                ],
                tmp / "energy.json",
            )  # fmt: skip
        g = d["gpu"]
        expected = 300.0 * d["duration_s"] / d["output_tokens"]
        err = g["energy_j_per_output_token"] / expected - 1
        print(
            f"  {g['energy_source']:<17} J/token {g['energy_j_per_output_token']:.4f}"
            f"  expected {expected:.4f}  error {err:+.2%}  util {g['util_pct_mean']:.1f} %"
            f"  power {g['power_w_mean']:.1f} W  ({'ok' if abs(err) <= 0.10 else 'FAIL'})"
        )


def split_line(name: str, d: dict[str, Any]) -> str:
    s = d["server_latency"]
    t = s["ttft_ms"]
    lo, hi = t["p50_bucket_ms"]
    return (
        f"  {name:<10} client TTFT p50 {d['ttft_ms']['p50']:9.1f} ms   server {t['p50']:9.1f} ms"
        f" (bucket {lo:g}-{hi:g})   queue mean {s['queue_ms']['mean']:9.1f}"
        f"   prefill mean {s['prefill_ms']['mean']:6.1f}   n {t['count']}"
    )


def simulator(tmp: Path) -> None:
    from llmtop.sim.launcher import start_sim

    print("== server vs client on the simulator (--max-num-seqs 4, 256 in / 32 out, 5 s)")
    common = ["--duration", "5", "--input-len", "256", "--output-len", "32"]
    with start_sim(extra_args=("--max-num-seqs", "4")) as sim:
        for rate in ("2", "40"):
            d = run(["--url", sim.url, "--request-rate", rate, *common], tmp / "sim.json")
            print(split_line(f"{rate} req/s", d))


def vllm(tmp: Path) -> None:
    from tests.support.vllm_server import running_vllm

    print("== server vs client on a real vLLM (CPU build, tiny Llama, 64 in / 32 out)")
    with running_vllm(max_num_seqs=8) as url:
        for rate in ("2", "8"):
            d = run(
                [
                    "--url", str(url), "--num-requests", "32", "--request-rate", rate,
                    "--input-len", "64", "--output-len", "32",
                ],
                tmp / "vllm.json",
            )  # fmt: skip
            print(split_line(f"{rate} req/s", d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vllm", action="store_true", help="also against a real vLLM CPU build")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        energy(tmp)
        simulator(tmp)
        if a.vllm:
            vllm(tmp)


if __name__ == "__main__":
    main()
