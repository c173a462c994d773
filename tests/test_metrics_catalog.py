"""One table of metrics: every list of names and every definition on screen comes from it;
the SLO language stays pure and the session needs nothing from the output layer."""

from __future__ import annotations

import subprocess
import sys

from llmtop.metrics import catalog
from llmtop.metrics.collector import Collector
from llmtop.slo import LATENCY_METRICS, RATE_METRICS, Slo
from tests.conftest import ROOT


def test_every_slo_metric_has_one_row() -> None:
    names = [m.name for m in catalog.CATALOG]
    assert len(names) == len(set(names))
    for name in (*LATENCY_METRICS, *RATE_METRICS):
        assert catalog.BY_NAME[name].slo
    assert {m.name for m in catalog.CATALOG if m.slo} == {*LATENCY_METRICS, *RATE_METRICS}
    # an SLO may name any recorded latency: each is judged from its histogram
    assert set(LATENCY_METRICS) == set(catalog.METRICS)
    Slo.parse(",".join(f"{m}_p99<=1s" for m in catalog.METRICS))


def test_name_lists_are_views_of_the_table() -> None:
    assert set(Collector().cumulative) == set(catalog.METRICS)
    for subset in (
        catalog.LIVE_METRICS,
        catalog.GAUGE_METRICS,
        catalog.INTERVAL_METRICS,
        catalog.SPECTRUM_METRICS,
    ):
        assert set(subset) <= set(catalog.METRICS)
        order = [catalog.METRICS.index(n) for n in subset]
        assert order == sorted(order)
    assert all(catalog.BY_NAME[m].unit == "ms" for m in catalog.METRICS)


def test_definitions_on_screen_and_in_the_table_are_the_catalogs() -> None:
    from llmtop.output.console import TABLE_METRICS
    from llmtop.tui.model import GAUGE_METRICS

    for key, label, definition in TABLE_METRICS:
        m = catalog.BY_NAME[key.removesuffix("_ms")]
        assert (label, definition) == (m.label, m.definition)
    assert [k.removesuffix("_ms") for k, _, _ in TABLE_METRICS] == list(catalog.METRICS)
    for name, label, definition in GAUGE_METRICS:
        assert (label, definition) == (
            catalog.BY_NAME[name].label,
            catalog.BY_NAME[name].definition,
        )


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    return set(out.split())


def test_slo_is_pure_and_the_session_needs_no_output_layer() -> None:
    slo_deps = {m for m in _modules_after("import llmtop.slo") if m.startswith("llmtop.")}
    assert slo_deps == {"llmtop.slo"}
    session_deps = _modules_after("import llmtop.session")
    assert not {m for m in session_deps if m.startswith("llmtop.output")}
