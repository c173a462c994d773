"""The engine side's robustness: what a server answers never raises out of the poller, and an
engine's own secrets never reach a file llmtop writes (its log, the sweep's snapshot)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmtop.engines.detect import TRTLLM_JSON
from llmtop.engines.launch import launch_engine
from llmtop.engines.poller import MetricsPoller, trtllm_sample
from tests.conftest import ROOT
from tests.fixtures.engines.fake_engine import FakeEngine, Reply

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=12,
)
_KEYS = ["inflightBatchingStats", "kvCacheStats", "numActiveRequests", "iterLatencyMS",
         "numCompletedRequests", "numQueuedRequests", "iter"]  # fmt: skip
_STAT = st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(_STAT, max_size=4))
def test_property_trtllm_stats_of_any_shape_never_raise(stats: list[dict[str, Any]]) -> None:
    sample = trtllm_sample(stats, 2_000_000_000, 1_000_000_000, True)
    for key in ("running", "waiting", "kv_cache_usage", "generation_tps", "prompt_tps"):
        v = sample[key]
        assert v is None or (isinstance(v, int | float) and math.isfinite(v)), (key, v)


def test_a_bad_last_answer_does_not_cost_the_series() -> None:
    answers = iter([b"[]", b'[{"numActiveRequests": 3}]', b'[{"kvCacheStats": "x"}]', b"{"])

    def metrics(body: bytes) -> Reply:
        return Reply(next(answers, b"not json"))

    with FakeEngine({"GET /metrics": metrics}) as url:
        poller = MetricsPoller(url + "/metrics", TRTLLM_JSON, engine="trtllm-serve")
        poller.poll_once()
        poller.poll_once()
        poller.poll_once()
        series = poller.finish()  # the last answer is not JSON at all
    assert len(series) == 3 and series[1]["running"] == 3
    assert series[2]["kv_cache_usage"] is None


_ENGINE = r"""
import os, sys
args = sys.argv[3:]
print("engine args:", " ".join(args), flush=True)  # as vLLM prints its own arguments
print("HF_TOKEN=" + os.environ.get("HF_TOKEN", ""), flush=True)
i = args.index("--api-key")
del args[i:i + 2]
os.environ["PYTHONPATH"] = ROOT
os.execv(sys.executable, [sys.executable, "-m", "llmtop.sim", *args])
"""
ENGINE_KEY = "engine-key-0123456789abcdef"
HF = "hf_tokenvalue0123456789"


def test_an_engines_secrets_stay_out_of_its_log(tmp_path: Path) -> None:
    script = tmp_path / "engine-python"
    script.write_text(f"#!{sys.executable}\nROOT = {str(ROOT)!r}\n" + _ENGINE)
    script.chmod(0o755)
    log = tmp_path / "engine.log"
    from llmtop.errors import forget_secrets, register_secrets_from_argv

    register_secrets_from_argv(["--api-key", ENGINE_KEY], {"HF_TOKEN": HF})
    try:
        with launch_engine(
            "vllm",
            ["--model", "llama-3.2-1b", "--api-key", ENGINE_KEY],
            python=str(script),
            env={"HF_TOKEN": HF},
            log_path=log,
        ) as eng:
            argv = eng.public_argv()
            tail = eng.log_tail()
    finally:
        forget_secrets()
    text = log.read_text()
    assert "engine args:" in text and "--api-key ***" in text and "HF_TOKEN=***" in text
    for secret in (ENGINE_KEY, HF):
        assert secret not in text and secret not in tail and secret not in " ".join(argv)
    assert argv[argv.index("--api-key") + 1] == "***"


def test_the_sweep_snapshot_keeps_no_engine_secret(tmp_path: Path) -> None:
    script = tmp_path / "engine-python"
    script.write_text(f"#!{sys.executable}\nROOT = {str(ROOT)!r}\n" + _ENGINE)
    script.chmod(0o755)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    r = subprocess.run(
        [sys.executable, "-m", "llmtop", "launch", "vllm", "--engine-python", str(script),
         "--engine-env", f"HF_TOKEN={HF}", "--out", str(out), "--num-requests", "4",
         "--input-len", "8", "--output-len", "4", "--no-progress",
         "--", "--model", "llama-3.2-1b", "--api-key", ENGINE_KEY],
        cwd=ROOT, capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    snap = json.loads((out / "vllm-default.json").read_text())
    argv = snap["sweep"]["argv"]
    assert argv[argv.index("--api-key") + 1] == "***"
    for path in out.iterdir():
        for secret in (ENGINE_KEY, HF):
            assert secret not in path.read_text(), path
    for secret in (ENGINE_KEY, HF):
        assert secret not in r.stdout + r.stderr
