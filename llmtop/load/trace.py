"""Trace replay: a Mooncake-format JSONL trace read into rows the load process replays.

One request per line: ``{"timestamp": ms, "input_length": N, "output_length": M,
"hash_ids": [...]}``, where each hash id names one 512-token block of the prompt (requests that
share an id share that block, which is what a prefix cache sees). The file is read once in the
parent; every problem is a one-line `ConfigError` naming the file and the line. The rows cross
into the load process inside the `RunConfig`; the request bytes are built there
(`llmtop.backends.prompts.TracePrompts`) and the send times come from
`llmtop.load.arrivals.TraceSchedule`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmtop.config import TraceRow
from llmtop.errors import ConfigError

TRACE_BLOCK_TOKENS = 512  # Mooncake's hash_ids each stand for 512 prompt tokens


def _whole(value: Any, where: str, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: {key} must be a whole number >= {low}, got {value!r}")
    return value


def parse_row(item: Any, where: str) -> TraceRow:
    """One trace line's object as (timestamp ms, input tokens, output tokens, hash ids)."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a JSON object with timestamp, input_length, ...")
    for key in ("timestamp", "input_length", "output_length"):
        if key not in item:
            raise ConfigError(f"{where}: no {key!r}")
    ts = item["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < 0 or ts != ts:
        raise ConfigError(f"{where}: timestamp must be milliseconds >= 0, got {ts!r}")
    n_in = _whole(item["input_length"], where, "input_length", 1)
    n_out = _whole(item["output_length"], where, "output_length", 1)
    ids = item.get("hash_ids", [])
    if not isinstance(ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in ids
    ):
        raise ConfigError(f"{where}: hash_ids must be a list of whole numbers")
    return (float(ts), n_in, n_out, tuple(ids))


def load_trace(path: str | Path, limit: int | None = None) -> tuple[TraceRow, ...]:
    """The trace's rows in time order (a stable sort: equal times keep the file's order)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such trace file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read trace: {exc}") from None
    rows: list[TraceRow] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc.msg})") from None
        rows.append(parse_row(item, where))
    if not rows:
        raise ConfigError(f"{path}: the trace holds no requests")
    rows.sort(key=lambda r: r[0])
    if limit is not None:
        rows = rows[:limit]
    return tuple(rows)


def offsets_ns(rows: tuple[TraceRow, ...] | list[TraceRow]) -> list[int]:
    """Each row's send time relative to the first, in ns (trace time, before any speed-up)."""
    if not rows:
        return []
    t0 = rows[0][0]
    return [round((r[0] - t0) * 1e6) for r in rows]


def mean_rate(rows: tuple[TraceRow, ...] | list[TraceRow], speed: float = 1.0) -> float:
    """The trace's mean request rate in req/s at `speed` (what the live rate control shows)."""
    offs = offsets_ns(rows)
    span = offs[-1] if offs else 0
    return (len(offs) - 1) * 1e9 / span * speed if span else speed


def describe(rows: tuple[TraceRow, ...] | list[TraceRow], speed: float) -> str:
    """One line for notes and tables."""
    span_s = offsets_ns(rows)[-1] / 1e9 if rows else 0.0
    n_in = sum(r[1] for r in rows) / len(rows)
    n_out = sum(r[2] for r in rows) / len(rows)
    return (
        f"{len(rows)} requests over {span_s / speed:.1f} s (speed {speed:g}), "
        f"mean {n_in:.0f} in / {n_out:.0f} out tokens"
    )
