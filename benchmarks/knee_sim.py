"""Bar (issue 5): `llmtop knee --slo 'ttft_p99<=1s' --input-len 2048 --output-len 128` on the
built-in simulator (vLLM flavour, Llama-3-8B on an A100-80G) finds the knee between 5 and 6
req/s in under 3 minutes.

Runs the real command line (the simulator is started by `llmtop knee` itself, as a user
would get it with no --url), then prints the knee, its confidence, the steps and the wall time.

    .venv/bin/python benchmarks/knee_sim.py [extra knee flags]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_REGISTER = (
    "import sys\n"
    "from llmtop.cli import cli, main\n"
    "if 'knee' not in cli.commands:\n"
    "    from llmtop.cli.knee import knee_command\n"
    "    cli.add_command(knee_command, 'knee')\n"
    "sys.argv[0] = 'llmtop'\n"
    "main()\n"
)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "knee.json"
        cmd = [
            sys.executable,
            "-c",
            _REGISTER,
            "knee",
            "--slo",
            "ttft_p99<=1s",
            "--input-len",
            "2048",
            "--output-len",
            "128",
            "--json",
            str(out),
            *sys.argv[1:],
        ]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=600)
        wall = time.monotonic() - t0
        sys.stderr.write(proc.stderr)
        print(proc.stdout)
        if proc.returncode != 0 or not out.exists():
            print(f"FAILED rc={proc.returncode} after {wall:.1f} s")
            return 1
        d = json.loads(out.read_text())
    k = d["knee"]
    rate = k["rate"]
    ok_rate = rate is not None and 5.0 <= rate <= 6.0
    ok_time = wall < 180
    print(
        f"knee {rate} req/s (first bad {k['first_bad']}), confidence {k['confidence']},"
        f" output {k['output_throughput']} tok/s; wall {wall:.1f} s"
    )
    print(
        f"bar: knee in [5, 6] {'PASS' if ok_rate else 'FAIL'};"
        f" under 180 s {'PASS' if ok_time else 'FAIL'}"
    )
    return 0 if ok_rate and ok_time else 2


if __name__ == "__main__":
    sys.exit(main())
