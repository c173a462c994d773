"""Token-id prompts or text prompts: what the difference does to a real vLLM under load.

llmtop's synthetic completions prompts have gone as token-id lists, so the server never
tokenizes them; production traffic is text, and on vLLM the API server's tokenization and
detokenization share a process (and here a CPU) with everything else. This runs the real
vLLM CPU build (tests/support/vllm_server.py: a tiny random-weight Llama, its own trained
byte-level BPE tokenizer) and loads it both ways with `llmtop run --prompt-format tokens|text`
(text sized exactly with the server's /tokenize; both with a unique start, so the prefix cache
never helps either), at a few open-loop rates, interleaved (tokens, text, text, tokens, ...)
so that drift in the machine's load hits both alike; then a short knee search each way
(`llmtop knee`, TTFT p99 SLO). It prints TTFT p50/p99, the achieved rate and the vLLM API
server's CPU seconds per request (its own process: tokenization lives there), and the knees.
This is the evidence for `--prompt-format`'s default (llmtop/cli/workloads.py).

    .venv/bin/python benchmarks/prompt_format.py [--rates 4,8,16] [--duration 15]
        [--input-len 512] [--output-len 32] [--knee-slo 'ttft_p99<=250ms'] [--no-knee]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from floor_client import MachineLoad, pin, proc_cpu_s  # noqa: E402

from tests.support.vllm_server import running_vllm, vllm_python  # noqa: E402

FORMATS = ("tokens", "text")
PRIORITY = ["nice"]  # the client's: nice -20 (the server runs at the same priority)


def llmtop(
    args: list[str], timeout_s: float, on_started: Any = None, ok: tuple[int, ...] = (0,)
) -> dict[str, Any]:
    """`python -m llmtop ARGS --json`; `on_started()` is called when the load begins (the
    line naming the engine comes after the preflight, right before the load)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "o.json"
        cmd = [sys.executable, "-m", "llmtop", *args, "--json", str(out)]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            preexec_fn=pin(None, PRIORITY[0]),  # ahead of other people's jobs (when root)
        )
        assert proc.stderr is not None
        err: list[str] = []
        deadline = time.monotonic() + timeout_s
        for line in proc.stderr:
            err.append(line)
            if on_started is not None and "engine:" in line:
                on_started()
                on_started = None
            if time.monotonic() > deadline:
                proc.kill()
        proc.wait()
        if proc.returncode not in ok or not out.exists():
            raise SystemExit(f"{' '.join(args)} failed:\n{''.join(err)[-2000:]}")
        return json.loads(out.read_text())


def one_run(url: str, fmt: str, rate: float, a: argparse.Namespace, api_pid: int) -> dict:
    """One measured run; the API server's CPU is read from the load's start (not the
    preflight's /tokenize calls that size the text prompts)."""
    cpu0 = [proc_cpu_s(api_pid)]
    load = MachineLoad()

    def started() -> None:
        cpu0[0] = proc_cpu_s(api_pid)

    d = llmtop(
        ["run", "--url", url, "--prompt-format", fmt, "--input-len", str(a.input_len),
         "--output-len", str(a.output_len), "--request-rate", str(rate), "--duration",
         str(a.duration), "--warmup", str(a.warmup), "--seed", str(a.seed)],
        a.duration + a.warmup + 300,
        started,
    )  # fmt: skip
    cpu = proc_cpu_s(api_pid) - cpu0[0]
    machine = load.report(0.0)
    sent = d["completed"] + d["failed"] + d.get("warmup_requests", 0)
    return {
        "format": fmt,
        "rate": rate,
        "ttft_p50": d["ttft_ms"]["p50"],
        "ttft_p99": d["ttft_ms"]["p99"],
        "tpot_p50": d["tpot_ms"]["p50"],
        "achieved": d["request_throughput"],
        "failed": d["failed"],
        "prompts_as": d.get("workload", {}).get("prompts_as"),
        "api_cpu_ms_per_req": cpu / sent * 1e3 if sent else None,
        "others_cpu_pct": machine.get("others_cpu_pct"),
    }


def knee(url: str, fmt: str, a: argparse.Namespace) -> dict:
    d = llmtop(
        ["knee", "--url", url, "--prompt-format", fmt, "--input-len", str(a.input_len),
         "--output-len", str(a.output_len), "--slo", a.knee_slo, "--start-rate", "2",
         "--step", "2", "--resolution", "25%", "--min-step-s", "5", "--max-step-s", "10",
         "--seed", str(a.seed)],
        1800,
        ok=(0, 3),  # 3: the SLO was never met (a knee of none is still a result)
    )  # fmt: skip
    k = d.get("knee") or {}
    keys = ("value", "first_bad", "request_throughput", "confidence", "reason")
    return {"format": fmt, "knee": {x: k.get(x) for x in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="4,8,16")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--knee-slo", default="ttft_p99<=250ms")
    ap.add_argument("--no-knee", action="store_true")
    ap.add_argument("--knee-only", action="store_true")
    ap.add_argument("--knee-order", default="tokens,text", help="formats, in order, for knees")
    ap.add_argument("--out", help="also write every figure as JSON here")
    ap.add_argument("--priority", choices=("normal", "nice"), default="nice")
    a = ap.parse_args()
    PRIORITY[0] = a.priority
    if vllm_python() is None:
        raise SystemExit("no vLLM venv: bash .ci/install_vllm.sh")
    rates = [] if a.knee_only else [float(r) for r in a.rates.split(",")]
    t0 = time.monotonic()
    runs: list[dict] = []
    knees: list[dict] = []
    nice = -20 if a.priority == "nice" else 0
    with running_vllm(max_num_seqs=a.max_num_seqs, nice=nice) as url:
        print(f"vLLM up in {url.startup_s:.0f} s at {url}; API server pid {url.pid}")
        for rate in rates:
            for rep in range(a.repeats):
                order = FORMATS if rep % 2 == 0 else FORMATS[::-1]
                for fmt in order:
                    r = one_run(url, fmt, rate, a, url.pid)
                    runs.append(r)
                    print(
                        f"  {fmt:6} {rate:5g} req/s  TTFT p50 {r['ttft_p50']:8.2f}  p99 "
                        f"{r['ttft_p99']:8.2f} ms  achieved {r['achieved']:6.2f}/s  API CPU "
                        f"{r['api_cpu_ms_per_req'] or 0:6.2f} ms/req  others "
                        f"{r['others_cpu_pct']}%",
                        flush=True,
                    )
        if not a.no_knee:
            for fmt in a.knee_order.split(","):
                k = knee(url, fmt, a)
                knees.append(k)
                print(f"  knee {fmt}: {json.dumps(k['knee'])[:300]}", flush=True)
    print()
    print(f"{a.input_len} in / {a.output_len} out, vLLM CPU build (tiny Llama), "
          f"max-num-seqs {a.max_num_seqs}, {a.repeats} runs per cell (median shown)")  # fmt: skip
    print("rate   format  TTFT p50 ms  TTFT p99 ms  achieved req/s  API-server CPU ms/req")
    for rate in rates:
        for fmt in FORMATS:
            cell = [r for r in runs if r["rate"] == rate and r["format"] == fmt]

            def med(key: str, cell: list[dict] = cell) -> float:
                return statistics.median(r[key] or 0.0 for r in cell)

            print(f"{rate:5g}  {fmt:6}  {med('ttft_p50'):11.2f}  {med('ttft_p99'):11.2f}  "
                  f"{med('achieved'):14.2f}  {med('api_cpu_ms_per_req'):21.2f}")  # fmt: skip
    print("paired (text − tokens, same rate and round), median over rounds:")
    for rate in rates:
        tok = [r for r in runs if r["rate"] == rate and r["format"] == "tokens"]
        txt = [r for r in runs if r["rate"] == rate and r["format"] == "text"]
        for key, unit in (("ttft_p50", "ms"), ("ttft_p99", "ms"), ("api_cpu_ms_per_req", "ms")):
            diffs = [(b[key] or 0) - (t[key] or 0) for t, b in zip(tok, txt, strict=False)]
            if diffs:
                print(f"  {rate:5g} req/s  {key:20} {statistics.median(diffs):+9.2f} {unit}"
                      f"   (rounds: {', '.join(f'{d:+.1f}' for d in diffs)})")  # fmt: skip
    for k in knees:
        print(f"knee ({a.knee_slo}) {k['format']}: {json.dumps(k['knee'])[:300]}")
    print(f"({time.monotonic() - t0:.0f} s)")
    if a.out:
        Path(a.out).write_text(json.dumps({"runs": runs, "knees": knees}, indent=1))


if __name__ == "__main__":
    main()
