"""The study's scenario 1 (small batches, TPOT < 20 ms) on the simulator, on a fake clock.

Published (Llama-3-8B BF16, one A100-SXM-80G, 2048 in / 128 out, requests sent at once, max
batch size 4): vLLM 230 output tok/s, TensorRT-LLM 197 tok/s, TensorRT-LLM's TPOT slightly
lower than vLLM's. benchmarks/sim_scenario1.py runs the full 4096 requests.
"""

from __future__ import annotations

import pytest

from llmtop.sim.des import run_burst
from llmtop.sim.model import (
    OPT_PROFILE_FULL_TOKENS,
    PerfModel,
    SeqWork,
    build_settings,
    opt_profile_efficiency,
)

PUBLISHED_TOK_S = {"vllm": 230.0, "trtllm": 197.0}
REQUESTS = 256  # 64 rounds of 4: the steady state, in about a second


def _run(engine: str) -> tuple[float, float]:
    s = build_settings(engine=engine, gpu="a100-80g", model="llama-3-8b", max_num_seqs=4)
    r = run_burst(s, REQUESTS, 2048, 128)
    return r.output_tok_s, r.tpot_p50_s


def test_scenario1_throughput_within_15_percent_and_tpot_under_20_ms() -> None:
    got = {e: _run(e) for e in ("vllm", "trtllm")}
    for engine, (tok_s, tpot_s) in got.items():
        assert tok_s == pytest.approx(PUBLISHED_TOK_S[engine], rel=0.15), (engine, tok_s)
        assert tpot_s < 0.020, (engine, tpot_s)
    # TensorRT-LLM: lower TPOT, yet lower throughput at batch 4.
    assert got["trtllm"][1] < got["vllm"][1]
    assert got["trtllm"][0] < got["vllm"][0]


def test_opt_profile_penalty_only_for_small_trtllm_batches() -> None:
    assert opt_profile_efficiency(OPT_PROFILE_FULL_TOKENS) == 1.0
    assert opt_profile_efficiency(2048) == 1.0
    assert 0.3 < opt_profile_efficiency(4) < 0.5
    prefill = [SeqWork(2048, 0, True)]
    default = PerfModel(build_settings(engine="trtllm"))
    small = PerfModel(build_settings(engine="trtllm", max_num_seqs=4))
    assert small.step_time(prefill) > 2 * default.step_time(prefill)
    decode = [SeqWork(1, 2048, True)] * 4  # a decode step fits the profile: no penalty
    assert small.step_time(decode) == pytest.approx(default.step_time(decode))
    vllm4 = PerfModel(build_settings(engine="vllm", max_num_seqs=4))
    vllm = PerfModel(build_settings(engine="vllm"))
    assert vllm4.step_time(prefill) == pytest.approx(vllm.step_time(prefill))
