"""What the simulator exports about itself: vLLM's latency histograms and DCGM-style GPU series.

Real loopback clients; the texts are read with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtop.sim.gpu import GpuMeter
from llmtop.sim.model import GPUS, build_settings
from llmtop.sim.prom import ITL_BUCKETS_S, REQUEST_LATENCY_BUCKETS_S, TTFT_BUCKETS_S
from llmtop.sim.server import SimServer

HISTS = {
    "vllm:time_to_first_token_seconds": TTFT_BUCKETS_S,
    "vllm:inter_token_latency_seconds": ITL_BUCKETS_S,
    "vllm:time_per_output_token_seconds": ITL_BUCKETS_S,
    "vllm:request_time_per_output_token_seconds": ITL_BUCKETS_S,
    "vllm:e2e_request_latency_seconds": REQUEST_LATENCY_BUCKETS_S,
    "vllm:request_queue_time_seconds": REQUEST_LATENCY_BUCKETS_S,
    "vllm:request_inference_time_seconds": REQUEST_LATENCY_BUCKETS_S,
    "vllm:request_prefill_time_seconds": REQUEST_LATENCY_BUCKETS_S,
    "vllm:request_decode_time_seconds": REQUEST_LATENCY_BUCKETS_S,
}
DCGM = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_PROF_SM_ACTIVE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
)


async def _start(time_scale: float = 1.0, **kw: Any) -> tuple[SimServer, str]:
    server = SimServer(build_settings(**kw), time_scale=time_scale)
    port = await server.start("127.0.0.1", 0)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def vllm() -> AsyncIterator[tuple[SimServer, str]]:
    server, url = await _start(engine="vllm")
    yield server, url
    await server.close()


async def _scrape(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """{family name: family} of a Prometheus text page."""
    async with s.get(url) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        text = await r.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _hist(fam: Any) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative (le, count) pairs, sum, count) of a one-series histogram family."""
    buckets, total, count = [], 0.0, 0.0
    for smp in fam.samples:
        assert smp.labels["model_name"] == "llama-3-8b" and smp.labels["engine"] == "0"
        if smp.name.endswith("_bucket"):
            buckets.append((float(smp.labels["le"]), smp.value))
        elif smp.name.endswith("_sum"):
            total = smp.value
        elif smp.name.endswith("_count"):
            count = smp.value
    return buckets, total, count


async def _stream(s: aiohttp.ClientSession, url: str, prompt_len: int, out: int) -> float:
    """One streamed completion; returns the client's TTFT in seconds."""
    body = {
        "prompt": list(range(1, prompt_len + 1)),
        "max_tokens": out,
        "ignore_eos": True,
        "stream": True,
    }
    t0 = time.perf_counter()
    ttft = None
    async with s.post(url + "/v1/completions", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: {") and ttft is None:
                ttft = time.perf_counter() - t0
    assert ttft is not None
    return ttft


def _bucket_of(buckets: list[tuple[float, float]], q: float, count: float) -> tuple[float, float]:
    """(lower, upper) bound of the bucket holding the q-quantile."""
    lower = 0.0
    for le, cum in buckets:
        if cum >= q * count:
            return lower, le
        lower = le
    return lower, float("inf")


async def test_histograms_have_vllm_names_buckets_and_labels(
    vllm: tuple[SimServer, str],
) -> None:
    _, url = vllm
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            await _stream(s, url, 64, 8)
        fams = await _scrape(s, url + "/metrics")
    for name, bounds in HISTS.items():
        assert fams[name].type == "histogram", name
        buckets, total, count = _hist(fams[name])
        assert [le for le, _ in buckets] == [*bounds, float("inf")], name
        assert buckets[-1][1] == count and total > 0
        cums = [c for _, c in buckets]
        assert cums == sorted(cums)
    assert _hist(fams["vllm:time_to_first_token_seconds"])[2] == 3
    assert _hist(fams["vllm:e2e_request_latency_seconds"])[2] == 3
    assert _hist(fams["vllm:inter_token_latency_seconds"])[2] == 3 * 7


async def test_server_and_client_agree_at_low_load(vllm: tuple[SimServer, str]) -> None:
    _, url = vllm
    async with aiohttp.ClientSession() as s:
        client = [await _stream(s, url, 512, 4) for _ in range(8)]
        fams = await _scrape(s, url + "/metrics")
    buckets, total, count = _hist(fams["vllm:time_to_first_token_seconds"])
    assert count == 8
    mean_server, mean_client = total / count, sum(client) / len(client)
    # The server stamps arrival after the HTTP parse and the first token before the write.
    assert 0 <= mean_client - mean_server < 0.01, (mean_client, mean_server)
    lo, hi = _bucket_of(buckets, 0.5, count)
    median_client = sorted(client)[3]
    assert lo - 0.01 <= median_client <= hi + 0.01, (lo, hi, median_client)
    _, queue_sum, _ = _hist(fams["vllm:request_queue_time_seconds"])
    assert queue_sum / count < 0.005  # nothing waits at one request at a time


async def test_overload_shows_up_as_queue_time() -> None:
    server, url = await _start(time_scale=10.0, engine="vllm", max_num_seqs=2)
    try:
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(_stream(s, url, 2048, 16) for _ in range(12)))
            fams = await _scrape(s, url + "/metrics")
    finally:
        await server.close()
    sums = {
        k: _hist(fams[f"vllm:{k}"])[1]
        for k in (
            "time_to_first_token_seconds",
            "request_queue_time_seconds",
            "request_prefill_time_seconds",
            "request_decode_time_seconds",
            "e2e_request_latency_seconds",
        )
    }
    # TTFT = queue + prefill and e2e = TTFT + decode, per request, so also in the sums.
    ttft = sums["time_to_first_token_seconds"]
    assert ttft == pytest.approx(
        sums["request_queue_time_seconds"] + sums["request_prefill_time_seconds"], rel=1e-6
    )
    assert sums["e2e_request_latency_seconds"] == pytest.approx(
        ttft + sums["request_decode_time_seconds"], rel=1e-6
    )
    # Two at a time out of twelve: most of the TTFT is waiting, not prefill.
    assert sums["request_queue_time_seconds"] > 2 * sums["request_prefill_time_seconds"]


def _dcgm(fams: dict[str, Any], name: str) -> dict[str, float]:
    return {smp.labels["gpu"]: smp.value for smp in fams[name].samples}


async def test_dcgm_series_labels_and_idle_power() -> None:
    server, url = await _start(engine="vllm", model="llama-3-70b", tp=2)
    gpu = GPUS["a100-80g"]
    try:
        async with aiohttp.ClientSession() as s:
            t1 = time.monotonic()
            a = await _scrape(s, url + "/dcgm/metrics")
            await asyncio.sleep(0.5)
            t2 = time.monotonic()
            b = await _scrape(s, url + "/dcgm/metrics")
    finally:
        await server.close()
    for name in DCGM:
        fam = b[name]
        assert len(fam.samples) == 2, name  # one series per tensor-parallel GPU
        for i, smp in enumerate(fam.samples):
            assert smp.labels["gpu"] == str(i)
            assert smp.labels["UUID"].startswith("GPU-")
            assert smp.labels["modelName"] == "NVIDIA A100-SXM4-80GB"
            assert smp.labels["Hostname"]
    assert b["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].type == "counter"
    assert set(_dcgm(b, "DCGM_FI_DEV_GPU_UTIL").values()) == {0.0}
    assert set(_dcgm(b, "DCGM_FI_DEV_POWER_USAGE").values()) == {gpu.idle_w}
    used = _dcgm(b, "DCGM_FI_DEV_FB_USED")["0"]
    free = _dcgm(b, "DCGM_FI_DEV_FB_FREE")["0"]
    assert 0.8 * gpu.mem_bytes / 2**20 < used + free <= gpu.mem_bytes / 2**20
    assert used > 70.55e9 * 2 / 2 / 2**20  # at least half of the 70B weights each
    d_mj = (
        _dcgm(b, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")["0"]
        - _dcgm(a, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")["0"]
    )
    # Idle: the counter grows at exactly the idle power (scrape times bound the interval).
    assert d_mj / 1000 == pytest.approx(gpu.idle_w * (t2 - t1), rel=0.05)


async def test_dcgm_energy_integrates_power_under_load() -> None:
    server, url = await _start(engine="vllm")
    gpu = GPUS["a100-80g"]
    try:
        async with aiohttp.ClientSession() as s:
            stop = asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    await _stream(s, url, 256, 32)

            tasks = [asyncio.create_task(client()) for _ in range(8)]
            await asyncio.sleep(1.2)  # past one full window of load
            samples = []
            for _ in range(6):
                fams = await _scrape(s, url + "/dcgm/metrics")
                samples.append(
                    (
                        time.monotonic(),
                        _dcgm(fams, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")["0"],
                        _dcgm(fams, "DCGM_FI_DEV_POWER_USAGE")["0"],
                        _dcgm(fams, "DCGM_FI_DEV_GPU_UTIL")["0"],
                        _dcgm(fams, "DCGM_FI_PROF_SM_ACTIVE")["0"],
                    )
                )
                await asyncio.sleep(0.25)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        await server.close()
    energies = [e for _, e, _, _, _ in samples]
    assert energies == sorted(energies)
    (t_a, e_a, *_), (t_b, e_b, _, util_b, sm_b) = samples[0], samples[-1]
    mean_w = (e_b - e_a) / 1000 / (t_b - t_a)
    powers = [p for _, _, p, _, _ in samples]
    assert gpu.idle_w < mean_w < gpu.tdp_w
    # The counter is the integral of the power the gauge averages over its last second.
    assert mean_w == pytest.approx(sum(powers) / len(powers), rel=0.1), (mean_w, powers)
    assert 20 <= util_b <= 100 and 0.0 < sm_b <= 1.0


def test_meter_energy_is_idle_plus_step_energy() -> None:
    """The pure arithmetic, on a fake clock: two steps, then idle."""
    s = build_settings(engine="vllm")
    gpu = s.gpu
    m = GpuMeter(s, start=100.0)
    m.step_started(100.0, gpu_s=0.5, compute_share=1.0)  # busy 100.0-100.5 at TDP
    assert m.energy_mj(100.25) == pytest.approx((gpu.idle_w * 0.25 + 340 * 0.25) * 1000)
    m.step_ended(100.6)  # 0.1 s of host time after the kernels
    m.step_started(100.6, gpu_s=0.4, compute_share=0.0)  # memory-bound: 60 % of the range
    m.step_ended(101.0)
    dyn = (gpu.tdp_w - gpu.idle_w) * (0.5 + 0.6 * 0.4)
    assert m.energy_mj(102.0) == pytest.approx((gpu.idle_w * 2.0 + dyn) * 1000)
    util, sm, watts = m.window(101.0)
    # The window starts at the last step end before 100.0: the start (no sample) → [100, 101].
    assert util == pytest.approx(0.9) and watts == pytest.approx(gpu.idle_w + dyn)
    assert sm == pytest.approx(0.5 + 0.4 * 0.8)
    assert m.window(103.0) == (0.0, 0.0, gpu.idle_w)
    assert json.dumps(m.text(101.0).decode())  # renders
