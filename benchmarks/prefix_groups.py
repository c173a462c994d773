"""Prefix groups on the simulator: what the cache holds, and what it does to TTFT.

The simulator (vLLM flavour, Llama-3-8B, one A100-80G; prefix caching on, as vLLM V1) gets
n requests of 2048 prompt tokens at a steady rate, once with `--prefix-groups 4 --prefix-len
1024` and once without shared prefixes, each after `--reset-prefix-cache`. Request i is in
group i mod 4, so each group's first request fills the cache and the other n − 4 find 1024
tokens there. Bars: cached_prompt_tokens / prompt_tokens within 0.05 of
(n − 4)·1024 / (n·2048), and TTFT p50 with the groups below TTFT p50 without.

    .venv/bin/python benchmarks/prefix_groups.py [--requests 100] [--rate 5] [--output-len 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUPS, PREFIX, PROMPT = 4, 1024, 2048


def run(extra: list[str], a: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o.json"
        cmd = [sys.executable, "-m", "llmtop", "run", "--sim-engine", "vllm", "--sim-gpu",
               "a100-80g", "--sim-model", "llama-3-8b", "--input-len", str(PROMPT),
               "--output-len", str(a.output_len), "--num-requests", str(a.requests),
               "--request-rate", str(a.rate), "--reset-prefix-cache", "--seed", str(a.seed),
               *extra, "--json", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    n = a.requests
    shared = run(["--prefix-groups", str(GROUPS), "--prefix-len", str(PREFIX)], a)
    plain = run([], a)
    expected = (n - GROUPS) * PREFIX / (n * PROMPT)
    frac = (shared["cached_prompt_tokens"] or 0) / shared["prompt_tokens"]
    server = shared.get("server_prefix_cache") or {}
    print(f"{n} requests of {PROMPT} tokens at {a.rate:g} req/s, {a.output_len} out (simulated "
          "vLLM, Llama-3-8B, A100-80G)")  # fmt: skip
    print("                      cached/prompt   server hit rate   TTFT p50 ms   TTFT p99 ms")
    for label, d in (("4 groups x 1024", shared), ("no shared prefix", plain)):
        c = d["cached_prompt_tokens"]
        f = f"{c / d['prompt_tokens']:.4f}" if c is not None else "  none"
        hr = (d.get("server_prefix_cache") or {}).get("hit_rate")
        hr_text = f"{hr:.4f}" if hr is not None else "-"
        print(f"{label:20}  {f:>13}   {hr_text:>15}   {d['ttft_ms']['p50']:11.2f}   "
              f"{d['ttft_ms']['p99']:11.2f}")  # fmt: skip
    print(f"expected cached/prompt (n − 4)·1024 / (n·2048) = {expected:.4f}")
    ok_frac = abs(frac - expected) <= 0.05
    ok_ttft = shared["ttft_ms"]["p50"] < plain["ttft_ms"]["p50"]
    print(f"bar: |cached/prompt − expected| = {abs(frac - expected):.4f} <= 0.05: "
          f"{'met' if ok_frac else 'MISSED'};  TTFT p50 {shared['ttft_ms']['p50']:.1f} < "
          f"{plain['ttft_ms']['p50']:.1f} ms: {'met' if ok_ttft else 'MISSED'}")  # fmt: skip
    if server.get("hit_rate") is not None:
        print(f"server's own hit rate over the run: {server['hit_rate']:.4f}")
    raise SystemExit(0 if ok_frac and ok_ttft else 1)


if __name__ == "__main__":
    main()
