"""The shoot-out end to end: two shipped profiles on the simulator's vLLM and TensorRT-LLM
flavours → snapshots → `llmtop compare` → `llmtop report`, and the report says what they hold.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import pytest

from llmtop.cli.options import (
    RunOptions,
    load_options,
    prepared,
    target_options,
    workload_options,
)
from llmtop.output.snapshot import build_snapshot, load_snapshot, save_snapshot
from llmtop.session import LoadSession
from llmtop.slo import Slo
from tests.test_snapshot import FIXTURES, run_cli

PROFILES = ("llama3-8b-128-128", "llama3-8b-2048-128")
ENGINES = ("vllm", "trtllm")
SHORT = ("--num-requests", "16", "--slo", "ttft_p99<=2s")  # a ~5 s run per engine


@click.command()
@target_options
@workload_options
@load_options
@click.option("--slo")
def _run(**o: Any) -> None:
    """The flags of `llmtop run`."""


def run_profile(profile: str, engine: str, out: Path) -> Path:
    """What `llmtop run --profile P --sim-engine E --save OUT` does, without the printing."""
    with _run.make_context("run", ["--profile", profile, "--sim-engine", engine, *SHORT]) as ctx:
        opts = RunOptions.from_params(ctx.params, ctx)
        slo = Slo.parse(ctx.params["slo"])
        with prepared(opts) as prep:
            session = LoadSession(prep.config, slo)
            session.start()
            try:
                session.wait_stopped(90)
            finally:
                session.close()
            session.tick(time.perf_counter_ns())
            assert session.failure is None, session.failure
            return save_snapshot(out, build_snapshot(session, prep.extra))


@pytest.fixture(scope="module")
def shootout(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("shootout")
    paths = []
    for profile in PROFILES:  # both engines of a profile at once: half the wall time
        with ThreadPoolExecutor(len(ENGINES)) as pool:
            futures = [
                pool.submit(run_profile, profile, e, out / f"{e}-{profile}.json") for e in ENGINES
            ]
            paths += [f.result() for f in futures]
    return paths


def test_snapshots_hold_the_run(shootout: list[Path]) -> None:
    for path in shootout:
        snap = load_snapshot(path)
        engine = "trtllm" if path.name.startswith("trtllm") else "vllm"
        assert snap["engine"]["name"] == engine and snap["engine"]["simulated"] is True
        assert snap["engine"]["detected"]["name"] == "llmtop-sim"
        assert snap["target"]["sim"]["engine"] == engine
        assert snap["profile"]["name"] in path.name and snap["model"] == "llama-3-8b"
        assert snap["summary"]["completed"] == 16 and snap["summary"]["failed"] == 0
        assert snap["slo"] == "ttft_p99<=2s" and snap["series"]
        assert snap["histograms"]["ttft"].startswith("HISTF")


def test_compare_the_shootout(shootout: list[Path]) -> None:
    r = run_cli("compare", *map(str, shootout))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Workload: 128 in / 128 out" in out and "Workload: 2048 in / 128 out" in out
    for profile in PROFILES:
        for engine in ENGINES:
            assert f"{engine} {profile}" in out
    assert "TTFT p99" in out and "Output throughput" in out and "×" in out and "*" in out
    assert "trtllm simulated, llama-3-8b" in out


def test_report_files_say_what_the_snapshots_hold(shootout: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    r = run_cli("report", *map(str, shootout), "-o", str(out))
    assert r.returncode == 0, r.stderr
    for stem in ("knee", "percentiles", "timeseries"):
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        svg = (out / f"{stem}.svg").read_text()
        assert "vllm llama3-8b-2048-128" in svg and "trtllm llama3-8b-128-128" in svg
    assert "TTFT percentile spectrum" in (out / "percentiles.svg").read_text()
    assert "99.9%" in (out / "percentiles.svg").read_text()
    page = (out / "report.md").read_text()
    for snippet in (
        "![Percentile spectrum](percentiles.png)",
        "![Throughput and latency against offered load](knee.png)",
        "| trtllm llama3-8b-2048-128 | trtllm simulated | llama-3-8b | 2048 in / 128 out |",
        "| vllm llama3-8b-128-128 | vllm simulated | llama-3-8b | 128 in / 128 out |",
        "ttft_p99<=2s",
        "Workload: 2048 in / 128 out",
    ):
        assert snippet in page, snippet
    for name in ("vllm-llama3-8b-128-128", "trtllm-llama3-8b-2048-128"):
        assert (out / "exports" / name / "ttft.hlog").read_text().count("HISTF") >= 1
        assert (out / "exports" / name / "steps.csv").read_text().startswith("step,")


def test_report_without_matplotlib_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "matplotlib", None)
        from llmtop.output.plots import ReportError, write_report

        with pytest.raises(ReportError, match=r"llmtop\[report\]"):
            write_report([load_snapshot(FIXTURES / "v0-trtllm-128-128.json")], tmp_path)


def test_report_bad_format_is_one_line(tmp_path: Path) -> None:
    r = run_cli(
        "report", str(FIXTURES / "v1-sim-vllm-128-128.json"), "-o", str(tmp_path), "--format", "gif"
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--format" in r.stderr
