"""The simulator's performance model and scheduler, on a fake clock (no sleeping)."""

from __future__ import annotations

import dataclasses

import pytest

from llmtop.sim.model import (
    PerfModel,
    SeqWork,
    SimConfigError,
    SimSettings,
    build_settings,
)
from llmtop.sim.scheduler import FINISHED, WAITING, Scheduler, SimRequest


def _req(rid: int, prompt: int, out: int, arrival: float = 0.0) -> SimRequest:
    return SimRequest(rid=rid, prompt_len=prompt, max_tokens=out, stop_at=out, arrival=arrival)


def _with_blocks(s: SimSettings, tokens: int) -> SimSettings:
    """Same settings with a KV cache of about `tokens` tokens (to force pressure)."""
    return dataclasses.replace(s, num_blocks=tokens // s.flavour.block_size)


def _run(sched: Scheduler, reqs: list[SimRequest], limit: int = 100_000) -> float:
    """Drive iterations back to back on a fake clock until every request finishes."""
    now = 0.0
    pending = sorted(reqs, key=lambda r: r.arrival)
    for _ in range(limit):
        while pending and pending[0].arrival <= now:
            sched.add(pending.pop(0))
        step = sched.schedule()
        if step is None:
            if not pending:
                return now
            now = pending[0].arrival
            continue
        now += step.duration
        sched.complete(step, now)
    raise AssertionError("did not finish")


def test_decode_is_memory_bound_and_prefill_compute_bound() -> None:
    s = build_settings("vllm", "a100-80g", "llama-3-8b")
    pm = PerfModel(s)
    f = s.flavour
    one = pm.step_time([SeqWork(1, 100, True)])
    floor = s.model.weight_bytes / (s.gpu.mem_bw * f.eff_bw)
    assert floor < one < floor * 1.05 + f.step_overhead_s + 1e-4
    # 2048 prompt tokens: compute-bound, ~2 * params * tokens / (peak * eff)
    pre = pm.step_time([SeqWork(2048, 0, True)])
    compute = 2 * s.model.linear_params * 2048 / (s.gpu.peak_flops * f.eff_flops)
    assert compute < pre < compute * 1.15 + f.step_overhead_s
    # Doubling decode batch costs far less than double (weights are read once).
    b32 = pm.step_time([SeqWork(1, 100, True)] * 32)
    assert b32 < 1.3 * one


def test_tensor_parallel_speeds_up_and_70b_needs_it() -> None:
    with pytest.raises(SimConfigError, match="does not fit"):
        build_settings("vllm", "a100-80g", "llama-3-70b", tp=1)
    s2 = build_settings("vllm", "a100-80g", "llama-3-70b", tp=2)
    s4 = build_settings("vllm", "a100-80g", "llama-3-70b", tp=4)
    w = [SeqWork(1, 500, True)] * 16
    assert PerfModel(s4).step_time(w) < PerfModel(s2).step_time(w)
    assert s4.num_blocks > s2.num_blocks


def test_unknown_presets_list_valid_names() -> None:
    with pytest.raises(SimConfigError, match="valid: a100-80g, h100-sxm, h200, l40s"):
        build_settings(gpu="v100")
    with pytest.raises(SimConfigError, match="llama-3-8b"):
        build_settings(model="gpt-5")
    with pytest.raises(SimConfigError, match="vllm, trtllm"):
        build_settings(engine="sglang")


def test_vllm_defaults_depend_on_gpu_class() -> None:
    a100 = build_settings("vllm", "a100-80g").flavour
    h100 = build_settings("vllm", "h100-sxm").flavour
    assert (a100.max_num_seqs, a100.max_num_batched_tokens) == (256, 2048)
    assert (h100.max_num_seqs, h100.max_num_batched_tokens) == (1024, 8192)
    trt = build_settings("trtllm", "a100-80g").flavour
    assert not trt.chunked_prefill and trt.reserve_full and a100.chunked_prefill


def test_continuous_batching_decodes_together() -> None:
    s = build_settings("vllm", max_num_batched_tokens=4096)
    sched = Scheduler(s)
    a, b = _req(1, 100, 5), _req(2, 100, 5)
    sched.add(a)
    sched.add(b)
    step = sched.schedule()
    assert step is not None and [n for _, n in step.work] == [100, 100]
    res = sched.complete(step, step.duration)
    assert res.emitted == [a, b]  # prefill ends with the first token for both
    step = sched.schedule()
    assert step is not None and [n for _, n in step.work] == [1, 1]
    assert step.num_gen_requests == 2 and step.num_ctx_requests == 0
    _run(sched, [])
    assert a.output_len == b.output_len == 5 and a.state == b.state == FINISHED
    assert sched.generation_tokens_total == 10 and sched.prompt_tokens_total == 200


def test_chunked_prefill_splits_a_long_prompt_across_steps() -> None:
    s = build_settings("vllm", max_num_batched_tokens=512)
    sched = Scheduler(s)
    r = _req(1, 1500, 3)
    sched.add(r)
    chunks = []
    now = 0.0
    while r.first_token_time is None:
        step = sched.schedule()
        assert step is not None
        chunks.append(step.work[0][1])
        now += step.duration
        sched.complete(step, now)
    assert chunks == [512, 512, 476]


def test_decodes_share_the_budget_with_a_prefill_chunk() -> None:
    s = build_settings("vllm", max_num_batched_tokens=512)
    sched = Scheduler(s)
    sched.add(_req(1, 10, 50))
    step = sched.schedule()
    assert step is not None
    sched.complete(step, 1.0)
    sched.add(_req(2, 2000, 5))
    step = sched.schedule()
    assert step is not None
    assert [n for _, n in step.work] == [1, 511]  # running decode first, then the chunk


def test_without_chunking_a_prompt_waits_for_a_whole_budget() -> None:
    with pytest.raises(SimConfigError, match="chunked prefill"):
        build_settings("vllm", max_num_batched_tokens=512, enable_chunked_prefill=False)
    s = build_settings("vllm", enable_chunked_prefill=False)
    assert s.flavour.max_num_batched_tokens == 8192
    sched = Scheduler(s)
    sched.add(_req(1, 5000, 2))
    sched.add(_req(2, 5000, 2))
    step = sched.schedule()
    assert step is not None and [n for _, n in step.work] == [5000]
    assert len(sched.waiting) == 1


def test_queueing_when_max_num_seqs_is_reached() -> None:
    s = build_settings("vllm", max_num_seqs=2)
    sched = Scheduler(s)
    reqs = [_req(i, 50, 10) for i in range(3)]
    for r in reqs:
        sched.add(r)
    step = sched.schedule()
    assert step is not None and len(step.work) == 2
    assert reqs[2].state == WAITING and len(sched.running) == 2
    _run(sched, [])
    assert reqs[2].first_token_time is not None
    assert reqs[2].first_token_time >= min(r.finish_time or 0 for r in reqs[:2])


def test_preemption_by_recompute_when_kv_cache_is_full() -> None:
    s = _with_blocks(build_settings("vllm"), 1008)
    sched = Scheduler(s)
    reqs = [_req(i, 300, 200) for i in range(3)]  # 3 x 500 tokens > 1008
    _run(sched, reqs)
    assert sched.num_preemptions_total > 0
    assert any(r.preemptions for r in reqs)
    assert all(r.output_len == 200 and r.state == FINISHED for r in reqs)
    assert sched.free_blocks == sched.total_blocks  # everything freed
    # A preempted request's recompute is prompt + what it had generated: more prompt work.
    victim = next(r for r in reqs if r.preemptions)
    assert victim.finish_time is not None


def test_trtllm_reserves_kv_up_front_and_never_preempts() -> None:
    s = _with_blocks(build_settings("trtllm"), 1024)
    sched = Scheduler(s)
    reqs = [_req(i, 300, 200) for i in range(3)]
    for r in reqs:
        sched.add(r)
    step = sched.schedule()
    assert step is not None and len(step.work) == 2  # third does not fit its full reserve
    _run(sched, [])
    assert sched.num_preemptions_total == 0
    assert all(r.output_len == 200 for r in reqs)
    assert reqs[2].first_token_time is not None and reqs[0].finish_time is not None
    assert reqs[2].first_token_time > reqs[0].finish_time


def test_abort_frees_blocks() -> None:
    s = build_settings("vllm")
    sched = Scheduler(s)
    r = _req(1, 100, 100)
    sched.add(r)
    step = sched.schedule()
    assert step is not None
    sched.complete(step, 1.0)
    assert sched.free_blocks < sched.total_blocks
    sched.abort(r)
    assert sched.free_blocks == sched.total_blocks and not sched.has_work()


def test_arrivals_during_a_step_wait_for_the_next_one() -> None:
    s = build_settings("vllm")
    sched = Scheduler(s)
    first = _req(1, 2000, 2)
    late = _req(2, 10, 2, arrival=0.01)
    end = _run(sched, [first, late])
    assert late.first_token_time is not None and first.first_token_time is not None
    assert late.first_token_time > first.first_token_time - 1e-9
    assert end > 0
