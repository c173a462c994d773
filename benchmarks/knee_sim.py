"""Bar (issue 11, after issue 5): `llmtop knee --slo 'ttft_p99<=1s' --input-len 2048
--output-len 128` on the built-in simulator (vLLM flavour, Llama-3-8B on an A100-80G) finds a
sustained knee between 5 and 6 req/s (issue 5's "under 3 minutes" was for the old search,
which judged steps before they were steady; issue 11 sets no time for this one: the wall time
is printed). Extra arguments go to `llmtop knee` (e.g. `--budget 10m`).

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
        # the progress lines go straight to stderr: a long search shows where it is
        proc = subprocess.run(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, timeout=1800)
        wall = time.monotonic() - t0
        print(proc.stdout)
        if proc.returncode != 0 or not out.exists():
            print(f"FAILED rc={proc.returncode} after {wall:.1f} s")
            return 1
        d = json.loads(out.read_text())
    k = d["knee"]
    rate = k["rate"]
    ok_rate = rate is not None and 5.0 <= rate <= 6.0 and bool(k.get("sustained"))
    print(
        f"knee {rate} req/s (first bad {k['first_bad']}), confidence {k['confidence']},"
        f" output {k['output_throughput']} tok/s; wall {wall:.1f} s"
    )
    print(f"bar: knee in [5, 6] {'PASS' if ok_rate else 'FAIL'}; (sustained: {k.get('sustained')})")
    return 0 if ok_rate else 2


if __name__ == "__main__":
    sys.exit(main())
