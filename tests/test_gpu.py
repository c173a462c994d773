"""GPU telemetry: a stand-in dcgm-exporter (a real aiohttp server on loopback) and NVML.

The stand-in draws a steady 300 W at 80 % utilisation on two GPUs (150 W each), its energy
counter in mJ moving with real time, so the run's energy per output token must be 300 W ×
the measured duration / output tokens, whichever way it is computed (counter or power).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llmtop.engines.gpu import GpuError, parse_dcgm, totals
from llmtop.metrics.serverside import gpu_summary
from tests.conftest import assert_one_line_error, run_cli
from tests.support.fault_server import FaultServer

FAST = ["--input-len", "16", "--output-len", "16"]


class StandInDcgm:
    """dcgm-exporter's text: `gpus` GPUs sharing `watts`, at `util` %, energy since start."""

    def __init__(self, watts: float = 300.0, util: float = 80.0, gpus: int = 2, counter=True):
        self.watts, self.util, self.gpus, self.counter = watts, util, gpus, counter
        self.t0 = time.monotonic()
        self.reads = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def text(self) -> str:
        per_w = self.watts / self.gpus
        energy_mj = per_w * (time.monotonic() - self.t0) * 1000.0 + 5e9  # since "boot"
        rows = [
            ("DCGM_FI_DEV_GPU_UTIL", "gauge", self.util),
            ("DCGM_FI_PROF_SM_ACTIVE", "gauge", 0.5),
            ("DCGM_FI_DEV_FB_USED", "gauge", 70000.0),
            ("DCGM_FI_DEV_POWER_USAGE", "gauge", per_w),
        ]
        if self.counter:
            rows.append(("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", energy_mj))
        out = []
        for name, typ, value in rows:
            out += [f"# HELP {name} x", f"# TYPE {name} {typ}"]
            for i in range(self.gpus):
                out.append(
                    f'{name}{{gpu="{i}",UUID="GPU-{i}",device="nvidia{i}",'
                    f'modelName="NVIDIA H100 80GB HBM3",Hostname="h"}} {float(value)!r}'
                )
        return "\n".join(out) + "\n"

    async def _metrics(self, request: web.Request) -> web.Response:
        self.reads += 1
        return web.Response(text=self.text(), content_type="text/plain")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/metrics"

    def __enter__(self) -> StandInDcgm:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def dcgm() -> Iterator[StandInDcgm]:
    with StandInDcgm() as server:
        yield server


def test_parse_dcgm_per_gpu_and_total() -> None:
    with StandInDcgm(watts=300.0, util=80.0, gpus=2) as s:
        read = parse_dcgm(s.text())
    assert read["source"] == "dcgm" and [g["gpu"] for g in read["gpus"]] == ["0", "1"]
    g = read["gpus"][0]
    assert g["power_w"] == 150.0 and g["util_pct"] == 80.0 and g["memory_used_mib"] == 70000
    assert g["energy_j"] == pytest.approx(5e6, rel=0.01)  # mJ on the wire, J here
    t = read["total"]
    assert t["gpus"] == 2 and t["power_w"] == 300.0 and t["util_pct"] == 80.0
    assert t["memory_used_mib"] == 140000.0 and t["energy_j"] == pytest.approx(1e7, rel=0.01)
    with pytest.raises(GpuError):
        parse_dcgm("# TYPE up gauge\nup 1\n")
    # a GPU without the counter: no total energy (a sum over some GPUs would be wrong)
    assert totals([{"energy_j": 1.0}, {"energy_j": None}])["energy_j"] is None


def test_summary_integrates_power_when_there_is_no_counter() -> None:
    # 200 W for 10 s, sampled each second, measured span 2 s .. 7 s
    series = [
        {"t_ns": i * 1_000_000_000, "gpu": {"total": {"gpus": 1, "power_w": 200.0}}}
        for i in range(11)
    ]
    s = gpu_summary(series, 2_000_000_000, 7_000_000_000, output_tokens=100)
    assert s is not None and s["energy_source"] == "integrated power"
    assert s["energy_j"] == pytest.approx(1000.0)
    assert s["energy_j_per_output_token"] == pytest.approx(10.0)
    assert s["power_w_mean"] == pytest.approx(200.0)
    assert gpu_summary([{"t_ns": 0}], 0, 1, 1) is None


@pytest.mark.parametrize("counter", [True, False], ids=["energy-counter", "integrated-power"])
def test_energy_per_token_against_a_steady_300w_exporter(
    fault_server: FaultServer, tmp_path: Path, counter: bool
) -> None:
    with StandInDcgm(watts=300.0, util=80.0, gpus=2, counter=counter) as dcgm:
        r = run_cli(
            "run",
            "--url",
            fault_server.url,
            "--gpu-metrics",
            dcgm.url,
            "--duration",
            "4",
            "--request-rate",
            "20",
            *FAST,
            json_path=tmp_path / "out.json",
            env={"NO_COLOR": "1"},
        )
        reads = dcgm.reads
    assert r.returncode == 0, r.stderr
    d = r.data
    g = d["gpu"]
    assert reads >= 4  # about once a second beside the load, plus one after it
    assert g["source"] == "dcgm" and g["gpus"] == 2
    assert g["energy_source"] == ("counter" if counter else "integrated power")
    expected = 300.0 * d["duration_s"] / d["output_tokens"]
    assert g["energy_j_per_output_token"] == pytest.approx(expected, rel=0.10)
    assert g["util_pct_mean"] == pytest.approx(80.0)
    assert g["power_w_mean"] == pytest.approx(300.0, rel=0.01)
    assert g["memory_used_mib_max"] == 140000.0
    assert "GPU" in r.stdout


def test_gpu_series_goes_into_the_snapshot(fault_server: FaultServer, tmp_path: Path) -> None:
    import json

    with StandInDcgm() as dcgm:
        r = run_cli(
            "run",
            "--url",
            fault_server.url,
            "--gpu-metrics",
            dcgm.url,
            "--duration",
            "2",
            "--request-rate",
            "10",
            *FAST,
            "--save",
            str(tmp_path / "s.json"),
        )
    assert r.returncode == 0, r.stderr
    snap = json.loads((tmp_path / "s.json").read_text())
    gpu_points = [s["gpu"] for s in snap["server_series"] if s.get("gpu")]
    assert len(gpu_points) >= 2
    assert len(gpu_points[0]["gpus"]) == 2 and gpu_points[0]["total"]["power_w"] == 300.0
    assert snap["summary"]["gpu"]["util_pct_mean"] == pytest.approx(80.0)


def test_unreachable_exporter_is_one_warning_and_the_run_goes_on(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    r = run_cli(
        "run",
        "--url",
        fault_server.url,
        "--gpu-metrics",
        "http://127.0.0.1:9/metrics",
        "--num-requests",
        "5",
        *FAST,
        json_path=tmp_path / "out.json",
    )
    assert r.returncode == 0, r.stderr
    assert "GPU metrics unavailable" in r.stderr and "Traceback" not in r.stderr
    assert r.data["completed"] == 5 and r.data["gpu"] is None


def test_bad_gpu_metrics_value_is_a_one_line_error() -> None:
    r = run_cli("run", "--url", "http://127.0.0.1:9", "--gpu-metrics", "nvidia0")
    assert_one_line_error(r, "--gpu-metrics")


def test_local_without_nvml_is_a_one_line_error(fault_server: FaultServer) -> None:
    from llmtop.engines.gpu import nvml_works

    if nvml_works():
        pytest.skip("this host has a GPU that NVML sees")
    r = run_cli("run", "--url", fault_server.url, "--gpu-metrics", "local", *FAST)
    assert_one_line_error(r, "--gpu-metrics local")


def test_ui_gpu_panel_shows_each_gpu_and_the_total(fault_server: FaultServer) -> None:
    """The GPU panel appears when the samples carry GPU telemetry: one line a GPU, a total."""
    import asyncio
    import io

    from rich.console import Console

    from llmtop.cli.options import prepared
    from llmtop.session import LoadSession
    from llmtop.tui.app import create_app
    from llmtop.tui.model import RunInfo
    from llmtop.tui.widgets.gpu_panel import GpuPanel
    from llmtop.tui.worker import SessionDriver
    from tests.test_tui import SLO, options, wait_for

    async def scenario(app: Any, driver: SessionDriver) -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            panel = app.main.query_one(GpuPanel)
            await wait_for(pilot, lambda: bool(panel.display and panel.server), timeout=20)
            console = Console(width=60, record=True, file=io.StringIO())
            console.print(panel.render())
            text = console.export_text()
            assert "gpu 0" in text and "gpu 1" in text and "all 2" in text, text
            assert "150 W" in text and "300 W" in text and "80%" in text, text
            assert panel.border_title == "gpu (dcgm)"
            await pilot.press("q")
            await wait_for(pilot, lambda: driver.done.is_set(), timeout=20)

    with StandInDcgm() as dcgm:
        opts = options(fault_server.url, gpu_metrics=dcgm.url)
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
            finally:
                poller.stop()
