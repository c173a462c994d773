"""Engine detection and server metrics, from bytes the engines serve (tests/fixtures/engines).

Each fixture cites the engine source it comes from (README.md there); vLLM's bytes were
captured from the real vLLM 0.32 CPU build (tests/fixtures/wire). Every test talks to a real
loopback server answering those bytes.
"""

from __future__ import annotations

import json
import time

import pytest

from llmtop.engines.detect import (
    LLAMACPP,
    PROMETHEUS,
    SGLANG,
    SIM,
    TRITON,
    TRTLLM,
    TRTLLM_JSON,
    UNKNOWN,
    VLLM,
    EngineInfo,
    detect_engine,
)
from llmtop.engines.poller import (
    MetricsError,
    MetricsPoller,
    parse_prometheus,
    parse_trtllm_stats,
    prometheus_sample,
    prometheus_values,
    trtllm_sample,
)
from tests.fixtures.engines.fake_engine import FakeEngine, Reply, fixture

TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _vllm_routes(metrics: bytes | None = None) -> dict:
    # vLLM 0.32 CPU build, captured (tests/fixtures/wire); vllm/entrypoints/openai/api_server.py
    return {
        "GET /version": Reply(fixture("version.json")),
        "GET /v1/models": Reply(fixture("models.json")),
        "GET /metrics": Reply(metrics or fixture("metrics.txt"), content_type=TEXT),
        "GET /health": Reply(b""),
    }


# --- detection ------------------------------------------------------------------------------


def test_detects_vllm_and_its_version():
    with FakeEngine(_vllm_routes(), server_header="uvicorn") as url:
        info = detect_engine(url + "/v1")
    assert info.name == VLLM
    assert info.version == "0.32.0"
    assert info.metrics_url == url + "/metrics"
    assert info.metrics_kind == PROMETHEUS
    assert info.label == "vLLM 0.32.0"
    assert info.public()["name"] == "vllm"


def test_detects_trtllm_serve_json_metrics_without_prometheus():
    # tensorrt_llm/serve/openai_server.py: /version, /v1/models (owned_by tensorrt_llm), /metrics
    routes = {
        "GET /version": Reply(fixture("trtllm_version.json")),
        "GET /v1/models": Reply(fixture("trtllm_models.json")),
        "GET /metrics": Reply(b"[]"),
    }
    with FakeEngine(routes, server_header="uvicorn") as url:
        info = detect_engine(url)
    assert (info.name, info.version) == (TRTLLM, "1.1.0")
    assert info.metrics_kind == TRTLLM_JSON
    assert info.metrics_url == url + "/metrics"


def test_detects_trtllm_serve_prometheus_when_enabled():
    # openai_server.py mount_metrics(): /prometheus/metrics when return_perf_metrics is on
    routes = {
        "GET /version": Reply(fixture("trtllm_version.json")),
        "GET /v1/models": Reply(fixture("trtllm_models.json")),
        "GET /prometheus/metrics": Reply(fixture("trtllm_prometheus.txt"), content_type=TEXT),
    }
    with FakeEngine(routes) as url:
        info = detect_engine(url)
    assert info.name == TRTLLM
    assert info.metrics_kind == PROMETHEUS
    assert info.metrics_url == url + "/prometheus/metrics"


def test_detects_triton_and_its_metrics_port():
    with FakeEngine({"GET /metrics": Reply(fixture("triton_metrics.txt"), content_type=TEXT)}) as m:
        metrics_port = int(m.rsplit(":", 1)[1])
        with FakeEngine({"GET /v2": Reply(fixture("triton_v2.json"))}) as url:
            info = detect_engine(url, triton_metrics_port=metrics_port)
        assert (info.name, info.version) == (TRITON, "2.52.0")
        assert info.metrics_url == f"http://127.0.0.1:{metrics_port}/metrics"
        sample = MetricsPoller.for_engine(info).poll_once()
    assert sample is not None
    assert sample["running"] == 8 and sample["waiting"] == 4
    assert sample["kv_cache_usage"] == pytest.approx(1 / 6240)


def test_detects_sglang_with_version_from_server_info():
    # python/sglang/srt/entrypoints/http_server.py: /get_server_info {... "version"}
    routes = {
        "GET /v1/models": Reply(fixture("sglang_models.json")),
        "GET /get_server_info": Reply(fixture("sglang_server_info.json")),
    }
    with FakeEngine(routes) as url:
        info = detect_engine(url)
    assert (info.name, info.version) == (SGLANG, "0.5.5")


def test_detects_llamacpp_by_its_server_header():
    # tools/server/server.cpp: set_default_headers({{"Server", "llama.cpp"}}); /props build_info
    routes = {
        "GET /v1/models": Reply(fixture("llamacpp_models.json")),
        "GET /props": Reply(fixture("llamacpp_props.json")),
    }
    with FakeEngine(routes, server_header="llama.cpp") as url:
        info = detect_engine(url)
    assert (info.name, info.version) == (LLAMACPP, "b6100-1a2b3c4d")
    assert info.details["total_slots"] == 4


def test_detects_the_builtin_simulator():
    from llmtop.sim.launcher import start_sim

    for flavour, kind in (("vllm", PROMETHEUS), ("trtllm", TRTLLM_JSON)):
        with start_sim(engine=flavour) as sim:
            info = detect_engine(sim.url)
        assert info.name == SIM
        assert info.details["simulated"] is True and info.details["flavour"] == flavour
        assert info.metrics_kind == kind


def test_unknown_server_and_unreachable_server_do_not_raise():
    with FakeEngine({"GET /v1/models": Reply(b'{"data":[{"id":"m"}]}')}) as url:
        info = detect_engine(url)
    assert info.name == UNKNOWN
    gone = detect_engine(url, timeout_s=0.5)  # the server has stopped
    assert gone.name == UNKNOWN


# --- metrics from each engine's bytes -------------------------------------------------------


def test_vllm_metrics_from_the_real_capture():
    values = prometheus_values(parse_prometheus(fixture("metrics.txt").decode()))
    assert values["running"] == 0 and values["waiting"] == 0
    assert values["kv_cache_usage"] == 0
    assert values["generation_tokens"] == 41044
    assert values["prompt_tokens"] == 4131
    assert values["prefix_queries"] == 4131 and values["prefix_hits"] == 0
    assert values["preemptions_total"] == 0


def test_rates_come_from_counter_deltas():
    before = prometheus_values(parse_prometheus(fixture("metrics.txt").decode()))
    text = fixture("metrics.txt").decode()
    text = (
        text.replace(
            'vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} 41044.0',
            'vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} 42044.0',
        )
        .replace(
            'vllm:prefix_cache_hits_total{engine="0",model_name="tiny-llama"} 0.0',
            'vllm:prefix_cache_hits_total{engine="0",model_name="tiny-llama"} 100.0',
        )
        .replace(
            'vllm:prefix_cache_queries_total{engine="0",model_name="tiny-llama"} 4131.0',
            'vllm:prefix_cache_queries_total{engine="0",model_name="tiny-llama"} 4531.0',
        )
    )
    after = prometheus_values(parse_prometheus(text))
    s = prometheus_sample(after, before, t_ns=2_000_000_000, prev_t_ns=0)
    assert s["generation_tps"] == pytest.approx(500.0)  # 1000 tokens in 2 s
    assert s["prompt_tps"] == 0
    assert s["prefix_cache_hit_rate"] == pytest.approx(0.25)  # 100 of 400 queried tokens
    assert set(s) >= {"t_ns", "running", "waiting", "kv_cache_usage", "preemptions_total", "raw"}
    first = prometheus_sample(before, None, t_ns=1, prev_t_ns=None)
    assert first["generation_tps"] is None  # no rate from a single scrape


def test_counter_reset_gives_no_rate():
    hi = {"generation_tokens": 100.0, "prompt_tokens": 10.0}
    lo = {"generation_tokens": 5.0, "prompt_tokens": 1.0}
    s = prometheus_sample(lo, hi, t_ns=10**9, prev_t_ns=0)
    assert s["generation_tps"] is None and s["prompt_tps"] is None


@pytest.mark.parametrize(
    ("name", "running", "waiting", "kv"),
    [
        ("trtllm_prometheus.txt", 7, 2, 0.42),
        ("sglang_metrics.txt", 5, 1, 0.12),
        ("llamacpp_metrics.txt", 3, 2, 0.25),
        ("triton_metrics.txt", 8, 4, 1 / 6240),
    ],
)
def test_prometheus_metrics_of_each_engine(name, running, waiting, kv):
    values = prometheus_values(parse_prometheus(fixture(name).decode()))
    assert values["running"] == running
    assert values["waiting"] == waiting
    assert values["kv_cache_usage"] == pytest.approx(kv)


def test_llamacpp_token_counters():
    values = prometheus_values(parse_prometheus(fixture("llamacpp_metrics.txt").decode()))
    assert values["generation_tokens"] == 700 and values["prompt_tokens"] == 1536


def test_trtllm_iteration_stats():
    # openai_server.py get_iteration_stats: the iterations since the last read
    stats = parse_trtllm_stats(fixture("trtllm_iteration_stats.json"))
    s = trtllm_sample(stats, t_ns=1_000_000_000, prev_t_ns=0, seen_any=True)
    assert s["running"] == 6 and s["waiting"] == 3
    assert s["kv_cache_usage"] == pytest.approx(0.32)
    assert s["prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert s["generation_tps"] == pytest.approx(10.0)  # 4 + 6 generation requests x 1 token
    assert s["prompt_tps"] == pytest.approx(256.0)
    assert s["raw"]["iterations"] == 2
    assert s["raw"]["iter_latency_ms_mean"] == pytest.approx(20.0)
    assert s["raw"]["completed_requests"] == 1
    idle = trtllm_sample([], t_ns=2, prev_t_ns=1, seen_any=True)
    assert idle["running"] == 0 and idle["waiting"] == 0
    unknown = trtllm_sample([], t_ns=2, prev_t_ns=1, seen_any=False)
    assert unknown["running"] is None


def test_trtllm_json_endpoint_is_drained_per_read():
    stats = fixture("trtllm_iteration_stats.json")
    reads: list[int] = []

    def drain(body: bytes) -> Reply:  # the engine empties its queue on each read
        reads.append(1)
        return Reply(stats if len(reads) == 1 else b"[]")

    info = EngineInfo(TRTLLM, "1.1.0", None, TRTLLM_JSON)
    with FakeEngine({"GET /metrics": drain}) as url:
        info = EngineInfo(TRTLLM, "1.1.0", url + "/metrics", TRTLLM_JSON)
        poller = MetricsPoller.for_engine(info)
        first = poller.poll_once()
        second = poller.poll_once()
    assert first is not None and first["running"] == 6
    assert second is not None and second["running"] == 0  # idle since: nothing new
    assert poller.problem is None


@pytest.mark.parametrize(
    "garbage",
    [b"<html><body>Welcome</body></html>", b"this is { not metrics", b"\x00\x01\x02"],
)
def test_garbage_is_not_prometheus(garbage):
    with pytest.raises(MetricsError):
        prometheus_values(parse_prometheus(garbage.decode("utf-8", "replace")))


def test_prometheus_of_something_else_is_refused():
    text = "# TYPE go_goroutines gauge\ngo_goroutines 12\n"
    with pytest.raises(MetricsError, match="none of the metrics"):
        prometheus_values(parse_prometheus(text))


# --- the poller: live, in a thread, and its failures ---------------------------------------


def test_poller_thread_samples_about_once_a_second_with_load_process_clock():
    n = {"calls": 0}
    base = fixture("metrics.txt").decode()

    def metrics(body: bytes) -> Reply:
        n["calls"] += 1
        tokens = 41044 + 250 * n["calls"]
        text = base.replace(
            'vllm:generation_tokens_total{engine="0",model_name="tiny-llama"} 41044.0',
            f'vllm:generation_tokens_total{{engine="0",model_name="tiny-llama"}} {tokens}.0',
        ).replace(
            'vllm:num_requests_running{engine="0",model_name="tiny-llama"} 0.0',
            f'vllm:num_requests_running{{engine="0",model_name="tiny-llama"}} {n["calls"]}.0',
        )
        return Reply(text.encode(), content_type=TEXT)

    with FakeEngine({**_vllm_routes(), "GET /metrics": metrics}) as url:
        info = detect_engine(url)
        t0 = time.perf_counter_ns()
        poller = MetricsPoller.for_engine(info, interval_s=0.2).start()
        time.sleep(1.1)
        poller.stop()
        t1 = time.perf_counter_ns()
    samples = poller.samples()
    assert 4 <= len(samples) <= 8, len(samples)
    assert all(t0 <= s["t_ns"] <= t1 for s in samples)  # the load process's clock
    assert [s["running"] for s in samples] == sorted(s["running"] for s in samples)
    rates = [s["generation_tps"] for s in samples[1:]]
    assert all(r is not None and 500 < r < 2500 for r in rates), rates  # 250 tokens / ~0.2 s
    latest = dict(poller.latest() or {})
    latest.pop("server_latency", None)  # the live window's figures: not kept in the series
    assert latest == samples[-1]
    assert poller.problem is None


def test_missing_metrics_endpoint_is_one_clear_warning():
    warnings: list[str] = []
    routes = {"GET /version": Reply(b'{"version":"b1"}')}
    with FakeEngine(routes, server_header="llama.cpp") as url:
        info = detect_engine(url)
        assert info.name == LLAMACPP
        poller = MetricsPoller.for_engine(info, interval_s=0.05, on_problem=warnings.append)
        poller.start()
        time.sleep(0.3)
        poller.stop()
    assert len(warnings) == 1
    assert "404" in warnings[0] and "--metrics" in warnings[0]
    assert "goes on without them" in warnings[0]
    assert poller.problem == warnings[0]
    assert poller.latest() is None and poller.samples() == []
    assert not poller.active


def test_garbage_metrics_endpoint_is_one_clear_warning():
    warnings: list[str] = []
    routes = {**_vllm_routes(), "GET /metrics": Reply(b"<html>oops</html>", content_type=TEXT)}
    with FakeEngine(routes) as url:
        poller = MetricsPoller.for_engine(detect_engine(url), on_problem=warnings.append)
        assert poller.poll_once() is None
        assert poller.poll_once() is None  # given up: no second scrape, no second warning
    assert len(warnings) == 1 and "not Prometheus text" in warnings[0]


def test_unreachable_metrics_endpoint_and_no_endpoint():
    poller = MetricsPoller("http://127.0.0.1:9/metrics", PROMETHEUS, timeout_s=0.5)
    assert poller.poll_once() is None
    assert poller.problem and "cannot reach" in poller.problem
    none = MetricsPoller(None, None, engine="unknown")
    assert none.problem and "no metrics endpoint" in none.problem
    none.start()
    assert not none.active and none.latest() is None


def test_a_server_that_stops_answering_later_is_given_up_after_a_few_failures():
    state = {"ok": True}

    def metrics(body: bytes) -> Reply:
        if state["ok"]:
            return Reply(fixture("metrics.txt"), content_type=TEXT)
        return Reply(b"upstream gone", status=502)

    with FakeEngine({"GET /metrics": metrics}) as url:
        poller = MetricsPoller(url + "/metrics", PROMETHEUS)
        assert poller.poll_once() is not None
        state["ok"] = False
        for _ in range(4):
            poller.poll_once()
            assert poller.problem is None  # a blip is tolerated
        poller.poll_once()
    assert poller.problem and "stopped after 5 failed reads" in poller.problem
    assert len(poller.samples()) == 1


def test_the_load_goes_on_when_server_metrics_fail():
    """A real run against the simulator with a poller on a dead endpoint: every request done."""
    from llmtop.config import LoadPlan, RunConfig, Target, Workload
    from llmtop.session import LoadSession
    from llmtop.sim.launcher import start_sim

    with start_sim(engine="vllm", model="llama-3.2-1b") as sim:
        config = RunConfig(
            Target(sim.url, model="llama-3.2-1b"),
            Workload(input_len=32, output_len=8),
            LoadPlan(request_rate=50.0, num_requests=20),
        )
        poller = MetricsPoller(sim.url + "/no-such-metrics", PROMETHEUS, interval_s=0.1)
        poller.start()
        session = LoadSession(config, server_sample=poller.latest)
        session.start()
        frames = []
        deadline = time.monotonic() + 60
        while not session.finished and time.monotonic() < deadline:
            frame = session.pump(0.05)
            if frame is not None:
                frames.append(frame)
        session.close()
        poller.stop()
    assert session.failure is None
    assert session.collector.counts.completed == 20
    assert poller.problem and "404" in poller.problem
    assert all(f.server is None for f in frames)


def test_finish_scrapes_once_more_so_the_series_covers_the_whole_load():
    """A 1 Hz series can end before the last request; finish() reads the counters after it."""
    from llmtop.config import LoadPlan, RunConfig, Target, Workload
    from llmtop.session import LoadSession
    from llmtop.sim.launcher import start_sim

    with start_sim(engine="vllm", model="llama-3.2-1b") as sim:
        config = RunConfig(
            Target(sim.url, model="llama-3.2-1b"),
            Workload(input_len=32, output_len=8),
            LoadPlan(request_rate=50.0, num_requests=20),
        )
        info = detect_engine(sim.url)
        poller = MetricsPoller.for_engine(info, interval_s=3600).start()  # one scrape, at once
        session = LoadSession(config, server_sample=poller.latest)
        session.start()
        deadline = time.monotonic() + 60
        while not session.finished and time.monotonic() < deadline:
            session.pump(0.05)
        session.close()
        series = poller.finish()
    assert session.collector.counts.completed == 20
    assert session.collector.steps[0].start_ns > session.start_ns  # the load loop's start
    assert len(series) == 2, series
    first, last = series
    generated = last["generation_tps"] * (last["t_ns"] - first["t_ns"]) / 1e9
    assert generated == pytest.approx(20 * 8), (first, last)  # the server's count = ours


def test_engine_info_public_is_json():
    info = EngineInfo(SIM, "0.1.0", "http://x/metrics", PROMETHEUS, {"flavour": "vllm"})
    assert json.loads(json.dumps(info.public()))["label"] == "llmtop-sim 0.1.0 (vllm flavour)"
