"""The SLO as a CI gate (issue 11): `run --slo` exits 3 when the whole-run SLO is breached,
still writing every output; 0 when it is met."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli
from tests.support.fault_server import FaultServer


def test_run_exits_3_when_the_slo_is_breached_and_still_writes(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    common = ["run", "--url", fault_server.url, "--request-rate", "20", "--duration", "2"]
    common += ["--input-len", "8", "--output-len", "4", "--no-progress"]
    bad = run_cli(*common, "--slo", "ttft_p99<=1us", json_path=tmp_path / "bad.json")
    assert bad.returncode == 3, bad.stderr
    assert "SLO was breached" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.data["slo"]["ok"] is False and bad.data["completed"] > 0
    good = run_cli(*common, "--slo", "ttft_p99<=10s", json_path=tmp_path / "good.json")
    assert good.returncode == 0, good.stderr
    assert good.data["slo"]["ok"] is True
