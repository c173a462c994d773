"""The report's knee plot (issue 11) from real knee snapshots: a short rate search and a short
concurrency search against the K-slot scripted server, then what the plot draws, checked as
data (`llmtop.output.kneeplot`), and `llmtop report` / `llmtop compare` on the files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from llmtop.output.kneeplot import judged_steps, knee_figure, legend_names
from llmtop.output.snapshot import load_snapshot
from tests.conftest import run_cli
from tests.test_knee_run import TOKENS, kslot_url, run_knee_cli  # noqa: F401 (a fixture)
from tests.test_snapshot import FIXTURES

# Every kind of limit: TTFT decides (the K-slot server's TTFT grows with its queue), the
# others are loose but must each get their line on their own panel.
RATE_SLO = "ttft_p99<=40ms,tpot_p90<=30ms,e2el_p99<=500ms,error_rate<=1%"
SHORT = ["--input-len", "16", "--output-len", str(TOKENS), "--min-step-s", "1.5"]
SHORT += ["--max-step", "3s", "--confirm-s", "3"]
SEGMENT_WORDS = ("warm-up", "drain", "settle")


@pytest.fixture(scope="module")
def knee_snaps(kslot_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """A rate search (40 → 80 breaks → bisect → confirm) and a concurrency search, saved."""
    out = tmp_path_factory.mktemp("knee-plot")
    rate = ["--slo", RATE_SLO, "--start-rate", "40", "--max-rate", "200", "--budget", "30"]
    conc = ["--slo", "ttft_p99<=40ms", "--concurrency-search", "--start-concurrency", "4"]
    conc += ["--max-concurrency", "32", "--budget", "25"]
    paths = {}
    for name, args in (("rate", rate), ("conc", conc)):
        path = out / f"{name}.json"
        r = run_knee_cli("--url", kslot_url, *args, *SHORT, "--save", str(path), timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        paths[name] = path
    return paths


def _snap(paths: dict[str, Path], name: str) -> dict[str, Any]:
    return load_snapshot(paths[name])


def _segment(label: str) -> bool:
    return any(w in label for w in SEGMENT_WORDS)


def test_only_judged_steps_are_drawn(knee_snaps: dict[str, Path]) -> None:
    snap = _snap(knee_snaps, "rate")
    collector = snap["steps"]
    assert any(_segment(s["label"]) and s["completed"] > 0 for s in collector)  # there were some
    judged = [s for s in snap["knee"]["steps"] if s["verdict"] in ("good", "bad")]
    axis, pts = judged_steps(snap)
    assert axis == "rate" and len(pts) == len(judged)
    for x, step in pts:
        seg = collector[step["collector_step"]]
        assert not _segment(seg["label"]), seg["label"]
        assert x == step["value"] == seg["offered"]  # the offered rate, not the achieved one
    # a snapshot without the knee's steps: the collector's steps, its segments left out
    bare = copy.deepcopy(snap)
    del bare["knee"]["steps"]
    axis, pts = judged_steps(bare)
    assert axis == "rate" and pts
    assert not any(_segment(s["label"]) for _, s in pts)
    assert {x for x, _ in pts} == {s["value"] for s in judged}
    # a load held twice (bisection, then its confirmation) draws one point on the line
    line = knee_figure([snap]).lines[0]
    xs, _ = line.path()
    assert xs == sorted(set(line.xs)) and line.verdicts.count("bad") >= 1


def test_every_limit_has_its_line_on_its_panel(knee_snaps: dict[str, Path]) -> None:
    snap = _snap(knee_snaps, "rate")
    fig = knee_figure([snap])
    panels = {p.key: p for p in fig.panels}
    expected = {
        "ttft.p99": 40.0,
        "tpot.p90": 30.0,
        "e2el.p99": 500.0,
        "error_rate": 1.0,  # drawn in percent
    }
    for key, y in expected.items():
        assert [lim[0] for lim in panels[key].limits] == [pytest.approx(y)], key
        assert RATE_SLO.split(",")[list(expected).index(key)] in panels[key].limits[0][1]
    assert panels["tpot.p99"].limits == []  # drawn (always), but nothing limits it
    line = fig.lines[0]
    for step in line.steps:
        assert panels["tpot.p90"].value(step) == step["tpot_ms"]["p90"]
        assert panels["e2el.p99"].value(step) == step["e2el_ms"]["p99"]
        assert not math.isnan(panels["ttft.p99"].value(step))


def test_knee_marker_at_the_sustained_knee(knee_snaps: dict[str, Path]) -> None:
    rate, conc = _snap(knee_snaps, "rate"), _snap(knee_snaps, "conc")
    fig = knee_figure([rate, conc])
    assert fig.axes == ["rate", "concurrency"]
    by_axis = {line.axis: line for line in fig.lines}
    for axis, snap, key, unit in (
        ("rate", rate, "rate", "req/s"),
        ("concurrency", conc, "concurrency", "concurrent"),
    ):
        knee = snap["knee"]
        assert knee[key] is not None, knee
        (mark,) = by_axis[axis].knees
        assert mark.x == knee[key] and mark.x in by_axis[axis].xs
        assert mark.y == knee["output_throughput"] and mark.sustained == knee["sustained"]
        how = "sustained" if knee["sustained"] else "unconfirmed"
        assert mark.text.endswith(f"{knee[key]:g} {unit} ({how})"), mark.text
    assert rate["knee"]["concurrency"] is None and conc["knee"]["rate"] is None


def test_legends_tell_snapshots_of_one_engine_apart(knee_snaps: dict[str, Path]) -> None:
    rate, conc = _snap(knee_snaps, "rate"), _snap(knee_snaps, "conc")
    assert rate["label"] == conc["label"]  # one engine, one label
    names = legend_names([rate, conc])
    assert len(set(names)) == 2 and "rate" in names[0] and "conc" in names[1]
    twin = copy.deepcopy(rate)  # the same file name elsewhere, taken at another time
    twin["created"] = "2020-01-01T00:00:00+00:00"
    names = legend_names([rate, twin])
    assert len(set(names)) == 2 and "2020-01-01" in names[1]
    assert len(set(legend_names([rate, copy.deepcopy(rate)]))) == 2
    fig = knee_figure([rate, conc])
    assert [line.name for line in fig.lines] == legend_names([rate, conc])


def test_all_at_once_runs_have_their_own_honest_axis(knee_snaps: dict[str, Path]) -> None:
    burst = load_snapshot(FIXTURES / "v1-sim-vllm-128-128.json")
    assert burst["steps"][0]["offered"] == "inf"  # everything sent at once: no rate offered
    fig = knee_figure([_snap(knee_snaps, "rate"), burst])
    assert fig.axes == ["rate", "all at once"]
    line = next(line for line in fig.lines if line.axis == "all at once")
    assert line.xs == [burst["summary"]["request_throughput"]] and not line.knees
    assert "all at once" in line.name


def test_report_writes_the_knee_plot_for_both_searches(
    knee_snaps: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    for which in (["rate"], ["conc"], ["rate", "conc"]):
        out = tmp_path / "-".join(which)
        files = [str(knee_snaps[w]) for w in which]
        r = run_cli("report", *files, "-o", str(out), "--format", "png,svg")
        assert r.returncode == 0, r.stderr
        assert (out / "knee.png").read_bytes().startswith(b"\x89PNG")
        svg = (out / "knee.svg").read_text()
        for w in which:
            knee = load_snapshot(knee_snaps[w])["knee"]
            unit = "req/s" if w == "rate" else "concurrent"
            how = "sustained" if knee["sustained"] else "unconfirmed"
            assert f"knee {knee['value']:g} {unit} ({how})" in svg, w
        assert "warm-up" not in svg and "drain" not in svg
        if "rate" in which:
            assert "SLO tpot_p90&lt;=30ms" in svg or "SLO tpot_p90<=30ms" in svg
        if "conc" in which:
            assert "concurrency (requests kept in flight)" in svg


def test_compare_has_knee_rows_for_rate_and_concurrency(knee_snaps: dict[str, Path]) -> None:
    r = run_cli("compare", "--json", str(knee_snaps["rate"]), str(knee_snaps["conc"]))
    assert r.returncode == 0, r.stderr
    rows = {row["metric"]: row for row in json.loads(r.stdout)["groups"][0]["rows"]}
    rate, conc = (load_snapshot(knee_snaps[w])["knee"] for w in ("rate", "conc"))
    assert rows["knee.rate"]["values"] == [rate["rate"], None]
    assert rows["knee.concurrency"]["values"] == [None, conc["concurrency"]]
    assert rows["knee.output_throughput"]["values"] == [
        rate["output_throughput"],
        conc["output_throughput"],
    ]
    text = run_cli("compare", str(knee_snaps["rate"]), str(knee_snaps["conc"])).stdout
    assert "Knee rate" in text and "Knee concurrency" in text
