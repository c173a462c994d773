"""The server's own latency split: Prometheus histograms → per-window and per-run percentiles.

Pure arithmetic first (known buckets, known answers), then the built-in simulator, whose
vLLM-named histograms are fed from the same times it streams tokens by: its figures agree
with the client's within a bucket at low load, and at overload its TTFT split shows the
queue taking over while prefill stays flat.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from llmtop.cli.options import prepared
from llmtop.engines.poller import parse_prometheus
from llmtop.engines.server_latency import HISTOGRAMS, LatencyWindow, parse_histograms
from llmtop.metrics.serverside import (
    bucket_counts,
    latency_figures,
    quantile_s,
    server_latency,
    spectrum_ms,
)
from tests.conftest import run_cli


def _hist(le: list[float], per_bucket: list[float], total_s: float = 0.0) -> dict:
    cum, c = [], 0.0
    for n in per_bucket:
        c += n
        cum.append(c)
    return {"source": "x", "le": le, "cum": cum, "sum": total_s}


def test_quantile_is_interpolated_linearly_within_the_bucket() -> None:
    le = [0.01, 0.02, 0.04]
    counts = [0.0, 10.0, 0.0, 0.0]  # ten values in (10 ms, 20 ms]
    v, lo, hi = quantile_s(le, counts, 0.5)
    assert (lo, hi) == (0.01, 0.02)
    assert v == pytest.approx(0.015)
    assert quantile_s(le, counts, 0.9)[0] == pytest.approx(0.019)
    # mass in two buckets: p50 at the end of the first, p75 half-way through the second
    counts = [0.0, 10.0, 10.0, 0.0]
    assert quantile_s(le, counts, 0.5)[0] == pytest.approx(0.02)
    assert quantile_s(le, counts, 0.75)[0] == pytest.approx(0.03)


def test_quantile_in_the_open_bucket_is_the_last_bound_and_empty_is_nan() -> None:
    le = [0.1, 1.0]
    v, lo, hi = quantile_s(le, [0.0, 0.0, 5.0], 0.99)
    assert v == 1.0 and lo == 1.0 and hi == math.inf
    assert all(math.isnan(x) for x in quantile_s(le, [0.0, 0.0, 0.0], 0.5))


def test_one_wide_bucket_is_narrowed_by_its_mean() -> None:
    """vLLM's first queue bucket is 0-300 ms: ten 4 ms waits must not read as 150 ms."""
    f = latency_figures(_hist([0.3, 0.5], [10, 0, 0], total_s=0.04), None)
    assert f is not None and f["mean"] == pytest.approx(4.0)
    assert f["p50"] == pytest.approx(4.0) and f["p99"] == pytest.approx(7.92)
    assert f["p50_bucket_ms"] == [0.0, 300.0]
    # mass near the top of a bucket: the stretch ends at the bound
    f = latency_figures(_hist([0.3, 0.5], [0, 10, 0], total_s=4.9), None)
    assert f["p50"] == pytest.approx(490.0) and f["p99"] <= 500.0
    # two buckets: plain interpolation (the mean says nothing about either one alone)
    f = latency_figures(_hist([0.3, 0.5], [5, 5, 0], total_s=1.0), None)
    assert f["p50"] == pytest.approx(300.0)


def test_bucket_deltas_between_scrapes_and_a_restart() -> None:
    before = _hist([0.1, 1.0], [2, 3, 0], 1.0)
    now = _hist([0.1, 1.0], [5, 3, 1], 4.0)
    assert bucket_counts(now, before) == [3.0, 0.0, 1.0]
    f = latency_figures(now, before)
    assert f is not None and f["count"] == 4
    assert f["mean"] == pytest.approx((4.0 - 1.0) / 4 * 1e3)
    assert f["p50_bucket_ms"] == [0.0, 100.0]
    restarted = _hist([0.1, 1.0], [1, 0, 0])
    assert bucket_counts(restarted, before) is None
    assert bucket_counts(_hist([0.2, 1.0], [9, 9, 9]), before) is None  # other bounds


VLLM_PAGE = """# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.01",model_name="m"} 1.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.1
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.01",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="0.02",model_name="m"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 2.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 2.0
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 0.03
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.01"} 7.0
vllm:time_per_output_token_seconds_bucket{le="+Inf"} 8.0
vllm:time_per_output_token_seconds_count 8.0
vllm:time_per_output_token_seconds_sum 0.08
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running 1.0
"""


def test_parse_sums_label_sets_and_reads_the_older_itl_name() -> None:
    h = parse_histograms(parse_prometheus(VLLM_PAGE))
    assert set(h) == {"ttft", "itl"}
    assert h["ttft"]["le"] == [0.01, 0.02]
    assert h["ttft"]["cum"] == [1.0, 5.0, 6.0]  # two engines, bucket by bucket
    assert h["ttft"]["sum"] == pytest.approx(0.13)
    assert h["itl"]["source"] == "vllm:time_per_output_token_seconds"
    assert h["itl"]["cum"] == [7.0, 8.0]


SGLANG_PAGE = """# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.04",model_name="m"} 1.0
sglang:time_to_first_token_seconds_bucket{le="0.06",model_name="m"} 3.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 3.0
sglang:time_to_first_token_seconds_sum{model_name="m"} 0.13
sglang:time_to_first_token_seconds_count{model_name="m"} 3.0
# TYPE sglang:queue_time_seconds histogram
sglang:queue_time_seconds_bucket{le="0.0",model_name="m"} 0.0
sglang:queue_time_seconds_bucket{le="0.1",model_name="m"} 3.0
sglang:queue_time_seconds_bucket{le="+Inf",model_name="m"} 3.0
sglang:queue_time_seconds_sum{model_name="m"} 0.01
sglang:queue_time_seconds_count{model_name="m"} 3.0
"""
TRTLLM_PAGE = """# TYPE trtllm_e2e_request_latency_seconds histogram
trtllm_e2e_request_latency_seconds_bucket{le="0.5",model_name="m",engine_type="trtllm"} 2.0
trtllm_e2e_request_latency_seconds_bucket{le="+Inf",model_name="m",engine_type="trtllm"} 2.0
trtllm_e2e_request_latency_seconds_sum{model_name="m",engine_type="trtllm"} 0.6
trtllm_e2e_request_latency_seconds_count{model_name="m",engine_type="trtllm"} 2.0
# TYPE trtllm_request_queue_time_seconds histogram
trtllm_request_queue_time_seconds_bucket{le="0.01",model_name="m",engine_type="trtllm"} 2.0
trtllm_request_queue_time_seconds_bucket{le="+Inf",model_name="m",engine_type="trtllm"} 2.0
trtllm_request_queue_time_seconds_sum{model_name="m",engine_type="trtllm"} 0.002
trtllm_request_queue_time_seconds_count{model_name="m",engine_type="trtllm"} 2.0
"""


def test_sglang_and_trtllm_names_read_and_what_they_lack_stays_none() -> None:
    sg = parse_histograms(parse_prometheus(SGLANG_PAGE))
    assert set(sg) == {"ttft", "queue"}
    assert sg["queue"]["source"] == "sglang:queue_time_seconds"
    tr = parse_histograms(parse_prometheus(TRTLLM_PAGE))
    assert set(tr) == {"e2el", "queue"}
    run = server_latency([{"t_ns": 0, "histograms": sg}])
    assert run is not None and run["ttft_ms"]["count"] == 3
    assert 40.0 <= run["ttft_ms"]["p50"] <= 60.0
    assert run["prefill_ms"] is None and run["decode_ms"] is None and run["itl_ms"] is None
    t = server_latency([{"t_ns": 0, "histograms": tr}])
    assert t is not None and t["queue_ms"]["mean"] == pytest.approx(1.0)
    assert t["queue_ms"]["p99"] <= 10.0 and t["ttft_ms"] is None


def test_every_engine_name_is_a_histogram_name() -> None:
    for key, names in HISTOGRAMS.items():
        assert names and all(n.endswith("_seconds") for n in names), key
    assert any(n.startswith("sglang:") for n in HISTOGRAMS["ttft"])
    assert any(n.startswith("trtllm_") for n in HISTOGRAMS["queue"])


def test_window_and_run_figures_count_only_what_finished_in_them() -> None:
    le = [0.01, 0.1]
    scrapes = [
        (0, {"ttft": _hist(le, [0, 0, 0])}),
        (1_000_000_000, {"ttft": _hist(le, [4, 0, 0])}),  # 4 fast
        (2_000_000_000, {"ttft": _hist(le, [4, 6, 0])}),  # then 6 slow
        (13_000_000_000, {"ttft": _hist(le, [4, 6, 1])}),  # one very slow, much later
    ]
    w = LatencyWindow(window_s=10.0)
    outs = [w.add(t, h) for t, h in scrapes]
    assert outs[0] is None
    assert outs[1]["ttft_ms"]["count"] == 4 and outs[1]["ttft_ms"]["p50"] <= 10.0
    assert outs[2]["ttft_ms"]["count"] == 10
    assert outs[3]["ttft_ms"]["count"] == 1  # the first scrapes left the 10 s window
    assert outs[3]["queue_ms"] is None
    series = [{"t_ns": t, "histograms": h} for t, h in scrapes]
    run = server_latency(series, start_ns=500_000_000)  # baseline: the scrape at 0
    assert run is not None and set(run) == {
        "ttft_ms",
        "queue_ms",
        "prefill_ms",
        "decode_ms",
        "e2el_ms",
        "itl_ms",
    }
    assert run["ttft_ms"]["count"] == 11
    assert run["ttft_ms"]["p50"] == pytest.approx(10.0 + 90.0 * (5.5 - 4) / 6)
    assert run["prefill_ms"] is None  # not exported: said as None, not as zero
    assert server_latency([{"t_ns": 0, "running": 1}]) is None
    spec = spectrum_ms(*[scrapes[-1][1]["ttft"], scrapes[0][1]["ttft"]])
    assert [q for q, _ in spec][-1] == 0.9999
    assert all(b >= a for (_, a), (_, b) in itertools.pairwise(spec))


@pytest.mark.timeout(300)
def test_simulator_agrees_at_low_load_and_shows_the_queue_at_overload(tmp_path: Path) -> None:
    from llmtop.sim.launcher import start_sim

    common = ["--duration", "5", "--input-len", "256", "--output-len", "32"]
    with start_sim(extra_args=("--max-num-seqs", "4")) as sim:
        low = run_cli(
            "run", "--url", sim.url, "--request-rate", "2", *common, json_path=tmp_path / "lo.json"
        )
        assert low.returncode == 0, low.stderr
        over = run_cli(
            "run", "--url", sim.url, "--request-rate", "40", *common, json_path=tmp_path / "o.json"
        )
        assert over.returncode == 0, over.stderr
    lo, ov = low.data, over.data
    for d in (lo, ov):
        s = d["server_latency"]
        assert s["ttft_ms"]["count"] == d["ttft_ms"]["count"] == d["completed"]
        assert s["itl_ms"]["count"] == d["itl_ms"]["count"]
        assert s["queue_ms"]["count"] == d["completed"]
    # low load: the server's TTFT p50 is the client's, within the bucket it fell in
    s = lo["server_latency"]["ttft_ms"]
    width = s["p50_bucket_ms"][1] - s["p50_bucket_ms"][0]
    assert abs(s["p50"] - lo["ttft_ms"]["p50"]) <= width
    assert s["p50"] <= lo["ttft_ms"]["p50"] + width
    assert lo["server_latency"]["queue_ms"]["mean"] < 0.25 * lo["ttft_ms"]["mean"]
    # overload: TTFT is the queue's now; prefill did not move, the client sees the wait
    o = ov["server_latency"]
    assert ov["ttft_ms"]["p50"] > 1000.0
    assert o["queue_ms"]["mean"] > 0.8 * ov["ttft_ms"]["mean"]
    assert o["prefill_ms"]["mean"] < 2 * lo["server_latency"]["prefill_ms"]["mean"] + 5.0
    assert ov["ttft_ms"]["p50"] - o["prefill_ms"]["p50"] > o["prefill_ms"]["p50_bucket_ms"][1]
    assert json.dumps(o)  # JSON-ready (no numpy types)


def _rendered(widget: Any) -> str:
    from rich.console import Console

    console = Console(width=160, record=True, file=io.StringIO())
    console.print(widget.render())
    return console.export_text()


@pytest.mark.timeout(120)
def test_ui_spectrum_shows_client_and_server_side_by_side() -> None:
    """The p key swaps the charts for the spectrum; its first line sets the server's TTFT
    (queue + prefill) beside the client's, and both curves are drawn."""
    from llmtop.session import LoadSession
    from llmtop.sim.launcher import start_sim
    from llmtop.tui.app import create_app
    from llmtop.tui.model import RunInfo
    from llmtop.tui.widgets.spectrum import SpectrumPanel, client_points, server_points
    from llmtop.tui.worker import SessionDriver
    from tests.test_tui import SLO, options, wait_for

    async def scenario(app: Any, driver: SessionDriver) -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            panel = app.main.query_one(SpectrumPanel)
            assert not panel.display
            await pilot.press("p")
            assert panel.display and not app.main.query_one("#charts").display

            def both() -> bool:
                f = panel.frame
                return bool(
                    f is not None and client_points(f, "ttft") and server_points(f.server, "ttft")
                )

            await wait_for(pilot, both, timeout=30)
            text = _rendered(panel)
            assert "TTFT p50  client" in text and "server" in text
            assert "queue" in text and "prefill" in text and "–  ·" not in text
            assert "p99.9" in text and "ITL" in text and "E2E" in text
            await pilot.press("p")
            assert not panel.display and app.main.query_one("#charts").display
            await pilot.press("q")
            await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

    with start_sim() as sim:
        opts = options(sim.url, input_len=64, output_len=16, request_rate=8.0)
        with prepared(opts) as prep:
            poller = prep.start_poller()
            info = RunInfo.from_extra(prep.extra, prep.config.plan, SLO, rate_step=0.1)
            driver = SessionDriver(
                lambda: LoadSession(prep.config, SLO, interval_s=0.1, server_sample=poller.latest),
                prep.extra,
            )
            driver.start()
            try:
                asyncio.run(scenario(create_app(info, driver), driver))
                # the live view has the window figures; the kept series only the histograms
                assert "server_latency" in (poller.latest() or {})
                kept = poller.samples()
                assert kept and all("server_latency" not in x for x in kept)
                assert all("histograms" in x for x in kept[1:])
            finally:
                poller.stop()
