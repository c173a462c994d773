"""The study's scenario 1 on the simulator: small batches under a TPOT limit.

Llama-3-8B BF16 on one A100-SXM-80G, 2048 input / 128 output tokens, 4096 requests sent at
once, max batch size 4 (`max_num_seqs` / trtllm `max_batch_size`), TPOT < 20 ms. Published:
vLLM 230 output tok/s, TensorRT-LLM 197 tok/s, with TensorRT-LLM's TPOT slightly lower than
vLLM's. Bar: each flavour within 15 % of its published throughput, TPOT p50 < 20 ms.
Discrete-event runs of the real scheduler and performance model (no sleeping).

    .venv/bin/python benchmarks/sim_scenario1.py [--requests 4096] [--batch-sizes 1,2,4,8]
"""

from __future__ import annotations

import argparse
import time

from llmtop.sim.des import run_burst
from llmtop.sim.model import build_settings

PUBLISHED_TOK_S = {"vllm": 230.0, "trtllm": 197.0}  # at max batch size 4
TPOT_LIMIT_S = 0.020
TOLERANCE = 0.15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4096)
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    a = ap.parse_args()
    t0 = time.perf_counter()
    print("engine  batch  output tok/s  published  error   TPOT p50 ms  TTFT p50 s  bar")
    ok_all = True
    for engine in ("vllm", "trtllm"):
        for bs in (int(b) for b in a.batch_sizes.split(",")):
            s = build_settings(engine=engine, gpu="a100-80g", model="llama-3-8b", max_num_seqs=bs)
            r = run_burst(s, a.requests, 2048, 128)
            pub = PUBLISHED_TOK_S[engine] if bs == 4 else None
            err = f"{(r.output_tok_s / pub - 1) * 100:+5.1f} %" if pub else "      -"
            bar = "-"
            if pub:
                ok = abs(r.output_tok_s / pub - 1) <= TOLERANCE and r.tpot_p50_s < TPOT_LIMIT_S
                ok_all &= ok
                bar = "met" if ok else "MISSED"
            print(
                f"{engine:7} {bs:5d}  {r.output_tok_s:12.1f}  {pub or '':>9}  {err}  "
                f"{r.tpot_p50_s * 1e3:11.2f}  {r.ttft_p50_s:10.1f}  {bar}"
            )
    print(f"({a.requests} requests per run, {time.perf_counter() - t0:.1f} s)")
    raise SystemExit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
