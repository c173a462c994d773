"""The snapshot: one versioned JSON file holding everything a run measured.

The UI's `s` key, `llmtop run --save`, the knee search and `llmtop compare` / `report` all
read and write this one format (documented in docs/snapshot-format.md). Histograms are stored
in the standard HdrHistogram compressed base64 encoding ("HISTFAAA..."), values in
microseconds, so any HdrHistogram library can decode them. Older layouts are migrated on load,
one version at a time, so a file written today still opens after the format moves on.
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdrh.histogram import HdrHistogram

from llmtop import __version__
from llmtop.errors import LlmtopError
from llmtop.metrics.catalog import METRICS
from llmtop.metrics.collector import Step
from llmtop.metrics.figures import step_summary
from llmtop.metrics.hdr import decode_histogram, encode_histogram
from llmtop.output.jsonfile import write_json_atomic

if TYPE_CHECKING:
    from llmtop.session import LoadSession

FORMAT = "llmtop-snapshot"
VERSION = 1


class SnapshotError(LlmtopError):
    """A file that is not a snapshot we can read."""


def histogram_of(node: dict[str, Any], metric: str, where: str = "snapshot") -> HdrHistogram | None:
    """The decoded histogram of `metric` in a snapshot, step or interval (None when empty)."""
    text = (node.get("histograms") or {}).get(metric)
    if not text:
        return None
    try:
        return decode_histogram(text)
    except (ValueError, TypeError, binascii.Error, zlib.error, IndexError) as exc:
        raise SnapshotError(f"{where}: the {metric} histogram is corrupt ({exc})") from None


def step_histograms(step: Step) -> dict[str, str | None]:
    """A collector step's histograms, encoded (packed steps are already encoded)."""
    compact = step.compact
    if compact is not None:
        return {m: (compact[m].decode("ascii") if compact.get(m) else None) for m in METRICS}
    live = step.histograms or {}
    return {m: (encode_histogram(live[m]) if m in live else None) for m in METRICS}


def _engine_of(extra: dict[str, Any]) -> dict[str, Any] | None:
    """The detected engine; for the simulator, the flavour it plays, marked as simulated."""
    engine = extra.get("engine")
    sim = (extra.get("target") or {}).get("sim")
    if sim:
        out: dict[str, Any] = {"name": sim.get("engine"), "version": "simulated", "simulated": True}
        if isinstance(engine, dict):
            out["detected"] = engine
        return out
    if engine:
        return dict(engine) if isinstance(engine, dict) else {"name": str(engine)}
    return None


def build_snapshot(
    session: LoadSession,
    extra: dict[str, Any],
    knee: dict[str, Any] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """The snapshot of a LoadSession as it stands now (it may still be running)."""
    collector = session.collector
    now = time.perf_counter_ns()
    start_ns = session.start_ns or now
    steps = []
    for step in collector.steps:
        s = step_summary(step, session.slo, now)
        s["start_s"] = round((step.start_ns - start_ns) / 1e9, 3)
        end = step.end_ns if step.end_ns is not None else now
        s["end_s"] = round((end - start_ns) / 1e9, 3)
        s["histograms"] = step_histograms(step)
        steps.append(s)
    recorder = session.interval_recorder
    recorder.flush()
    config = extra.get("config") or {}
    target = extra.get("target") or {}
    engine = _engine_of(extra)
    profile = extra.get("profile")
    if label is None:
        name = (engine or {}).get("name") or target.get("url") or "run"
        label = f"{name} {profile['name']}" if profile else str(name)
    return {
        "format": FORMAT,
        "version": VERSION,
        "llmtop_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "label": label,
        "target": target,
        "engine": engine,
        "model": target.get("model"),
        "workload": config.get("workload"),
        "plan": config.get("plan"),
        "load": extra.get("load"),
        "config": config,
        "profile": profile,
        "engine_config": extra.get("engine_config"),
        "slo": session.slo.text if session.slo else None,
        "summary": session.summary(),
        "failure": session.failure_record(),  # how the run ended, when not normally
        "histogram_unit": "us",
        "histograms": {m: encode_histogram(collector.cumulative[m]) for m in METRICS},
        "steps": steps,
        "intervals": list(recorder.intervals),
        "series": [p.as_dict() for p in session.series],
        "server_series": list(session.server_series),
        "knee": knee,
        "notes": list(extra.get("notes", [])),
    }


def save_snapshot(path: str | Path, snap: dict[str, Any]) -> Path:
    """Write atomically (temporary file, fsync, rename): a crash never leaves half a file."""
    body = {k: v for k, v in snap.items() if not k.startswith("_")}
    try:
        return write_json_atomic(path, body, indent=1)
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror or exc}") from None


# -- older layouts ----------------------------------------------------------------------
def _v0_to_v1(d: dict[str, Any]) -> dict[str, Any]:
    """v0 (llmtop before 0.1's snapshot format): `llmtop_snapshot: 0`, `run`, `rate_steps`,
    `timeseries`, histograms as {metric: base64} with values in µs, no engine or intervals."""
    run = d.get("run") or {}
    steps = []
    for i, s in enumerate(d.get("rate_steps") or []):
        s = dict(s)
        s.setdefault("index", i)
        s.setdefault("offered", s.pop("rate", None))
        s.setdefault("label", "")
        steps.append(s)
    target = d.get("target") or {"url": run.get("url"), "model": run.get("model")}
    return {
        "format": FORMAT,
        "version": 1,
        "llmtop_version": d.get("tool_version", "0"),
        "created": d.get("created"),
        "label": d.get("name") or target.get("url") or "run",
        "target": target,
        "engine": None,
        "model": target.get("model"),
        "workload": d.get("workload"),
        "plan": None,
        "load": d.get("load"),
        "config": {"workload": d.get("workload")},
        "profile": None,
        "engine_config": None,
        "slo": d.get("slo"),
        "summary": {k: v for k, v in run.items() if k not in ("url", "model")},
        "histogram_unit": "us",
        "histograms": dict(d.get("histograms") or {}),
        "steps": steps,
        "intervals": [],
        "series": list(d.get("timeseries") or []),
        "server_series": [],
        "knee": d.get("knee"),
        "notes": ["migrated from snapshot format v0"],
    }


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


def migrate(data: dict[str, Any], where: str = "snapshot") -> dict[str, Any]:
    """Bring any known older layout up to VERSION, one step at a time."""
    if "format" not in data and data.get("llmtop_snapshot") == 0:
        data = {**data, "version": 0}
    elif data.get("format") != FORMAT:
        raise SnapshotError(f'{where}: not an llmtop snapshot (no "format": "{FORMAT}")')
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise SnapshotError(f"{where}: snapshot version {version!r} is not a version number")
    if version > VERSION:
        raise SnapshotError(
            f"{where}: snapshot version {version} is newer than this llmtop reads ({VERSION}); "
            "upgrade llmtop"
        )
    while version < VERSION:
        data = MIGRATIONS[version](data)
        version = data["version"]
    return data


_SHAPE: dict[str, type | tuple[type, ...]] = {
    "summary": dict,
    "histograms": dict,
    "steps": list,
    "series": list,
    "intervals": list,
    "server_series": list,
}


def check(data: dict[str, Any], where: str = "snapshot") -> dict[str, Any]:
    """Types of the parts readers rely on, and the whole-run histograms decode."""
    for key, kind in _SHAPE.items():
        if not isinstance(data.get(key), kind):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise SnapshotError(f"{where}: {key!r} is missing or not a {name} (corrupt snapshot?)")
    for i, step in enumerate(data["steps"]):
        if not isinstance(step, dict) or not isinstance(step.get("histograms", {}), dict):
            raise SnapshotError(f"{where}: step {i} is not an object (corrupt snapshot?)")
    for m in data["histograms"]:
        histogram_of(data, m, where)
    return data


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Read, migrate and check a snapshot; a clear one-line error for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such snapshot file") from None
    except IsADirectoryError:
        raise SnapshotError(f"{path}: is a directory, not a snapshot file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SnapshotError(
            f"{path}: not a snapshot (invalid JSON at line {exc.lineno}: {exc.msg}; truncated?)"
        ) from None
    if not isinstance(data, dict):
        raise SnapshotError(f'{path}: not an llmtop snapshot (no "format": "{FORMAT}")')
    data = check(migrate(data, str(path)), str(path))
    data["_path"] = str(path)
    return data
