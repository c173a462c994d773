"""Read what `compare`, `report` and `export` are given: a snapshot, or a `run --json` result.

A `run --json` file is the whole-run summary with the run's configuration beside it; it has
no histograms, steps or time series. It is read into the snapshot's shape (those parts empty)
so the comparison and the report treat both alike: a table row for everything, pictures
where there is something to draw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtop.output.snapshot import FORMAT, VERSION, SnapshotError, load_snapshot

# Keys every `run --json` result has (the summary and the configuration beside it).
_RESULT_KEYS = ("completed", "failed", "duration_s", "ttft_ms", "config")


def is_run_result(data: Any) -> bool:
    return isinstance(data, dict) and "format" not in data and all(k in data for k in _RESULT_KEYS)


def _engine(result: dict[str, Any]) -> dict[str, Any] | None:
    """The engine as a snapshot names it: for the simulator, the flavour it plays."""
    sim = (result.get("target") or {}).get("sim")
    engine = result.get("engine")
    if sim:
        out: dict[str, Any] = {"name": sim.get("engine"), "version": "simulated", "simulated": True}
        if isinstance(engine, dict):
            out["detected"] = engine
        return out
    return dict(engine) if isinstance(engine, dict) else None


def result_as_snapshot(result: dict[str, Any], path: str) -> dict[str, Any]:
    """A `run --json` result in the snapshot's shape (no histograms, steps or series)."""
    config = result.get("config") or {}
    target = result.get("target") or config.get("target") or {}
    slo = result.get("slo")
    profile = result.get("profile")
    engine = _engine(result)
    name = (engine or {}).get("name") or target.get("url") or "run"
    label = f"{name} {profile['name']}" if isinstance(profile, dict) else str(name)
    summary = {k: v for k, v in result.items() if k not in ("config", "target", "engine")}
    return {
        "format": FORMAT,
        "version": VERSION,
        "llmtop_version": result.get("llmtop_version"),
        "created": None,
        "label": label,
        "target": target,
        "engine": engine,
        "model": target.get("model"),
        "workload": result.get("workload") or config.get("workload"),
        "plan": config.get("plan"),
        "load": result.get("load"),
        "config": config,
        "profile": profile,
        "engine_config": None,
        "slo": slo.get("text") if isinstance(slo, dict) else slo,
        "summary": summary,
        "histogram_unit": "us",
        "histograms": {},
        "steps": [],
        "intervals": [],
        "series": [],
        "server_series": [],
        "knee": None,
        "notes": list(result.get("notes") or []),
        "_path": path,
        "_kind": "run --json result",
    }


def load_result(path: str | Path) -> dict[str, Any]:
    """A snapshot, or a `run --json` result read into the snapshot's shape."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(4096)  # a snapshot opens with its "format" key
    except OSError:
        head = b""
    if head.lstrip()[:1] == b"{" and b'"format"' not in head:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if is_run_result(data):
            return result_as_snapshot(data, str(p))
        if isinstance(data, dict) and "knee" in data and "steps" in data:
            raise SnapshotError(
                f"{p}: a `knee --json` result; compare the knee's snapshot (`knee --save`)"
            )
    try:
        return load_snapshot(p)
    except SnapshotError as exc:
        if "not an llmtop snapshot" in str(exc):
            raise SnapshotError(
                f"{p}: neither an llmtop snapshot (--save) nor a `run --json` result"
            ) from None
        raise


def load_results(paths: tuple[str, ...] | list[str], what: str = "snapshot") -> list[dict]:
    """Each path as `load_result` reads it; at least one."""
    if not paths:
        raise SnapshotError(f"give at least one {what} (a --save snapshot or a run --json file)")
    return [load_result(p) for p in paths]
