"""The snapshot: one versioned JSON file holding everything a run measured.

The UI's `s` key, `llmtop run --save`, the knee search and `llmtop compare` / `report` all
read and write this one format. Histograms are stored in the standard HdrHistogram compressed
base64 encoding ("HISTFAAA..."), so any HdrHistogram library can decode them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from llmtop import __version__
from llmtop.errors import LlmtopError
from llmtop.metrics.collector import METRICS
from llmtop.report import write_json_atomic

FORMAT = "llmtop-snapshot"
VERSION = 1


class SnapshotError(LlmtopError):
    """A file that is not a snapshot we can read."""


def encode_histogram(h: HdrHistogram) -> str | None:
    return h.encode().decode("ascii") if h.get_total_count() else None


def decode_histogram(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


def build_snapshot(
    session: Any, extra: dict[str, Any], knee: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The snapshot of a LoadSession as it stands now (it may still be running)."""
    import time

    from llmtop.metrics.collector import step_summary

    collector = session.collector
    now = time.perf_counter_ns()
    steps = []
    for step in collector.steps:
        s = step_summary(step, session.slo, now)
        hists = step.all_histograms()
        s["histograms"] = {m: encode_histogram(hists[m]) for m in METRICS}
        steps.append(s)
    summary = session.summary()
    return {
        "format": FORMAT,
        "version": VERSION,
        "llmtop_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target": extra.get("target"),
        "engine": extra.get("engine"),
        "config": extra.get("config"),
        "load": extra.get("load"),
        "slo": session.slo.text if session.slo else None,
        "summary": summary,
        "histograms": {m: encode_histogram(collector.cumulative[m]) for m in METRICS},
        "steps": steps,
        "series": [p.as_dict() for p in session.series],
        "server_series": list(getattr(session, "server_series", [])),
        "knee": knee,
        "notes": extra.get("notes", []),
    }


def save_snapshot(path: str | Path, snap: dict[str, Any]) -> Path:
    path = Path(path)
    try:
        write_json_atomic(path, snap)
    except OSError as exc:
        raise SnapshotError(f"cannot write snapshot {path}: {exc.strerror or exc}") from None
    return path


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Read and check a snapshot; a clear one-line error for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such snapshot file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{path}: not a snapshot (invalid JSON at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SnapshotError(f'{path}: not an llmtop snapshot (no "format": "{FORMAT}")')
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise SnapshotError(
            f"{path}: snapshot version {version!r} is newer than this llmtop reads ({VERSION})"
        )
    return data
