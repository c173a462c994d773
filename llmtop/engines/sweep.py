"""Launch-and-sweep: one engine start, one measured load and one snapshot per configuration.

`--sweep max-num-seqs=1,8,64` becomes three engine starts with `--max-num-seqs 1` ... (a flag
already in the engine's args is replaced, not repeated); several `--sweep` options multiply.
Each configuration's load is the same run config (same prompts, same seed), measured with the
server's own metrics polled beside it, and saved as a snapshot; a table compares them at the
end. A configuration whose engine does not start is reported and the sweep goes on.

No engine outlives the sweep: SIGINT, SIGTERM and SIGHUP stop the load gracefully while one
runs (the point is saved) and interrupt everything else (an engine's health wait, the time
between points) at once, each engine stopped on the way out; a SIGKILLed llmtop leaves the
engine to its watchdog (`llmtop.engines.children`). From the start of a point's load to its
snapshot on disk and its row in the table, a signal is held (`_PointInterrupts`): it stops
the load, but takes effect as an interrupt only once the point is kept, so a finished
point's snapshot always survives. The interrupted sweep ends with `Interrupted` (exit 130):
one line saying which signal, during which point and stage, and what was kept; its
comparison.json gets a row for the point that was cut, with `"failure"`. Each engine's log,
redacted, lies beside its snapshot; a sweep that cannot start leaves no folder behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from llmtop.config import RunConfig
from llmtop.engines.launch import STOP_GRACE_S, EngineStartError, engine_command, launch_engine
from llmtop.errors import ConfigError, LlmtopError, redact
from llmtop.output.console import ProgressLine, print_summary
from llmtop.output.jsonfile import write_json_atomic
from llmtop.output.snapshot import build_snapshot, save_snapshot
from llmtop.output.writable import HeldSignals, Interrupted, check_writable, redeliver, signal_name
from llmtop.profiles import Profile
from llmtop.session import Interrupts, LoadSession, drive
from llmtop.setup import prepare
from llmtop.slo import Slo

_SAFE = re.compile(r"[^A-Za-z0-9._=,-]+")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One engine configuration: flag overrides and a label for files and tables."""

    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        if not self.overrides:
            return "default"
        return ",".join(f"{flag.lstrip('-')}={value}" for flag, value in self.overrides)

    @property
    def slug(self) -> str:
        return _SAFE.sub("_", self.label)


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """`max-num-seqs=1,8` → (`--max-num-seqs`, ["1", "8"])."""
    key, sep, values = spec.partition("=")
    key = key.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.lstrip("-") or not items:
        raise ConfigError(f"bad --sweep {spec!r}: expected KEY=V1,V2,... (e.g. max-num-seqs=1,8)")
    flag = key if key.startswith("-") else "--" + key
    return flag, items


def sweep_points(specs: Sequence[str]) -> list[SweepPoint]:
    """Every combination of the --sweep values, in the order given (one point without any)."""
    if not specs:
        return [SweepPoint()]
    parsed = [parse_sweep(s) for s in specs]
    flags = [f for f, _ in parsed]
    if len(set(flags)) != len(flags):
        raise ConfigError("the same key is swept twice: give its values in one --sweep")
    combos = itertools.product(*(values for _, values in parsed))
    return [SweepPoint(tuple(zip(flags, combo, strict=True))) for combo in combos]


def apply_overrides(args: Sequence[str], overrides: Sequence[tuple[str, str]]) -> list[str]:
    """The engine args with each `--flag value` set (replacing `--flag X` / `--flag=X`)."""
    out = list(args)
    for flag, value in overrides:
        i = 0
        replaced = False
        while i < len(out):
            if out[i] == flag and i + 1 < len(out):
                out[i + 1] = value
                replaced = True
                i += 2
                continue
            if out[i].startswith(flag + "="):
                out[i] = f"{flag}={value}"
                replaced = True
            i += 1
        if not replaced:
            out += [flag, value]
    return out


# -- the comparison --------------------------------------------------------------------------


def _pct(summary: Mapping[str, Any], metric: str, stat: str) -> float | None:
    d = summary.get(f"{metric}_ms")
    v = d.get(stat) if isinstance(d, dict) else None
    return float(v) if isinstance(v, int | float) else None


def comparison_row(
    label: str, snap: Mapping[str, Any], during_ns: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The figures one configuration is compared by (from its snapshot).

    The server's max running / waiting count only scrapes taken while the load ran
    (`during_ns`, perf_counter ns): the idle scrapes before and after it say nothing, and
    with none during the load the cell is "-", not 0.
    """
    s = snap.get("summary") or {}
    series = snap.get("server_series") or []
    if during_ns is not None:
        lo, hi = during_ns
        series = [p for p in series if isinstance(p.get("t_ns"), int) and lo <= p["t_ns"] <= hi]
    running = [p["running"] for p in series if isinstance(p.get("running"), int | float)]
    waiting = [p["waiting"] for p in series if isinstance(p.get("waiting"), int | float)]
    return {
        "config": label,
        "completed": s.get("completed", 0),
        "failed": s.get("failed", 0),
        "request_throughput": s.get("request_throughput", 0.0),
        "output_throughput": s.get("output_throughput", 0.0),
        "ttft_p50_ms": _pct(s, "ttft", "p50"),
        "ttft_p99_ms": _pct(s, "ttft", "p99"),
        "tpot_p50_ms": _pct(s, "tpot", "p50"),
        "tpot_p99_ms": _pct(s, "tpot", "p99"),
        "e2el_p50_ms": _pct(s, "e2el", "p50"),
        "server_running_max": max(running) if running else None,
        "server_waiting_max": max(waiting) if waiting else None,
        "error": None,
    }


# (header, row key, number format) of each column after the configuration's name
_COLUMNS = (
    ("done", "completed", "d"),
    ("fail", "failed", "d"),
    ("req/s", "request_throughput", ".2f"),
    ("out tok/s", "output_throughput", ",.1f"),
    ("TTFT p50", "ttft_p50_ms", ".1f"),
    ("TTFT p99", "ttft_p99_ms", ".1f"),
    ("TPOT p50", "tpot_p50_ms", ".2f"),
    ("TPOT p99", "tpot_p99_ms", ".2f"),
    ("E2E p50", "e2el_p50_ms", ".1f"),
    ("srv run", "server_running_max", ".0f"),
    ("srv wait", "server_waiting_max", ".0f"),
)


def format_comparison(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain table: one line per configuration, every column as wide as its widest cell
    (long configuration names and big figures keep the columns aligned)."""

    def num(v: Any, fmt: str) -> str:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return "-"
        return format(v, fmt) if fmt != "d" else f"{v:d}" if isinstance(v, int) else f"{v:g}"

    ok = [r for r in rows if not r.get("error")]
    cells = [[num(r.get(key), fmt) for _, key, fmt in _COLUMNS] for r in ok]
    widths = [
        max([len(head), *(len(c[i]) for c in cells)]) + 2 for i, (head, _, _) in enumerate(_COLUMNS)
    ]
    name_w = max([len("configuration"), *(len(str(r["config"])) for r in rows)]) + 2
    head = f"{'configuration':<{name_w}}" + "".join(
        f"{h:>{w}}" for (h, _, _), w in zip(_COLUMNS, widths, strict=True)
    )
    lines = ["", "comparison (latencies in ms; srv = the server's own max running / waiting)"]
    lines += [head, "-" * len(head)]
    row_cells = iter(cells)
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['config']:<{name_w}}failed: {str(r['error']).splitlines()[0]}")
            continue
        lines.append(
            f"{r['config']:<{name_w}}"
            + "".join(f"{c:>{w}}" for c, w in zip(next(row_cells), widths, strict=True))
        )
    return "\n".join(lines) + "\n"


# -- one configuration, end to end -----------------------------------------------------------


class _Stage:
    """Where the sweep is (point n of N, which stage) and the first signal that arrived."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.label = ""
        self.stage = "the engine check"
        self.signal: str | None = None  # the first signal, by name
        self.where: str | None = None  # where the sweep was when it came

    def at(self, stage: str) -> None:
        self.stage = stage

    def point(self, n: int, label: str) -> None:
        self.n, self.label = n, label

    def describe(self) -> str:
        if not self.n:
            return self.stage
        return f"sweep point {self.n}/{self.total} ({self.label}), {self.stage}"

    def note(self, signum: int) -> None:
        if self.signal is None:
            self.signal, self.where = signal_name(signum), self.describe()

    def failure(self) -> dict[str, Any]:
        """The `"failure"` of the point that was cut (before its load, or after it)."""
        return {
            "kind": "interrupted",
            "signal": self.signal,
            "message": f"interrupted by {self.signal} during {self.where}",
        }


class _SweepInterrupts(Interrupts):
    """`Interrupts` that tell the sweep's `_Stage` which signal came first, and where."""

    def __init__(self, stage: _Stage, raising: bool = False) -> None:
        super().__init__(raising=raising)
        self.stage = stage

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stage.note(signum)
        super()._on_signal(signum, frame)


class _PointInterrupts(_SweepInterrupts):
    """Counting interrupts for a point's load and save; each signal is raised again on exit.

    The load stops gracefully at the first signal (`drive()` counts it); the snapshot, its
    comparison row and its table are written after the load with the signal still held;
    only then, on exit, does the signal reach the sweep's raising handler and end the sweep.
    """

    def __init__(self, stage: _Stage) -> None:
        super().__init__(stage)
        self.received: list[int] = []

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        super()._on_signal(signum, frame)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        taken, self.received = self.received, []
        redeliver(taken)


def drive_session(
    config: RunConfig,
    slo: Slo | None,
    server_sample: Callable[[], Any] | None,
    progress: bool,
    interrupts: Interrupts,
) -> tuple[LoadSession, bool]:
    """Run the load to its end, the server metrics beside it: (closed session, interrupted)."""
    line = ProgressLine(progress)
    session = LoadSession(config, slo, server_sample=server_sample)
    session.start()
    try:
        ended = drive(session, lambda f: line.show(f), interrupts)
    finally:
        line.clear()
    return session, ended.interrupted


def _make_out_dir(path: Path) -> bool:
    """Create `--out` (and check a file can be written there); True when it was created."""
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LlmtopError(f"cannot create --out {path}: {exc.strerror or exc}") from None
    try:
        check_writable("--out", path / "comparison.json")
    except LlmtopError:
        if not existed:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return not existed


def _wrap_up(
    out_path: Path,
    rows: list[dict[str, Any]],
    created: bool,
    stdout: TextIO,
    echo: Callable[[str], None],
) -> None:
    """The comparison of the points that ran (after an interrupt too); no empty folder left."""
    if rows:
        with contextlib.suppress(OSError):
            stdout.write(format_comparison(rows))
            stdout.flush()
        try:
            write_json_atomic(out_path / "comparison.json", rows)
        except OSError as exc:
            echo(f"llmtop: cannot write {out_path / 'comparison.json'}: {exc.strerror or exc}")
    if created:
        with contextlib.suppress(OSError):
            out_path.rmdir()  # only when nothing was written into it


def _interrupted_line(stage: _Stage, snaps: Sequence[Path], out_path: Path, wrote: bool) -> str:
    """One line: which signal, where the sweep was, what was kept."""
    if snaps:
        kept = f"kept in {out_path}: " + ", ".join(p.name for p in snaps)
        kept += " and comparison.json" if wrote else " (comparison.json not written)"
    elif out_path.exists():
        kept = f"no point was measured; the engine logs are in {out_path}"
    else:
        kept = "no point was measured"
    return f"interrupted by {stage.signal or 'a signal'} during {stage.where}; {kept}"


@dataclasses.dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    snapshots: list[Path]
    out_dir: Path

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("error")]


def run_sweep(
    engine: str,
    engine_args: Sequence[str],
    points: Sequence[SweepPoint],
    config: RunConfig,
    out_dir: str | Path,
    *,
    slo: Slo | None = None,
    python: str | None = None,
    port: int | None = None,
    health_timeout_s: float = 900.0,
    env: Mapping[str, str] | None = None,
    nice: int = 0,
    stop_grace_s: float = STOP_GRACE_S,
    progress: bool = False,
    echo: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
    out: TextIO | None = None,
    profile: Profile | None = None,
    gpu_metrics: str | None = None,  # --gpu-metrics ("local" by default where NVML works)
) -> SweepResult:
    """For each point: start the engine, detect it, load it, snapshot it, stop it.

    Raises `Interrupted` (exit 130) after SIGINT, SIGTERM or SIGHUP, once every engine is
    stopped and the points measured so far are written.
    """

    stdout = out or sys.stdout
    out_path = Path(out_dir)
    rows: list[dict[str, Any]] = []
    snaps: list[Path] = []
    stage = _Stage(len(points))
    created = False

    def _measure(n: int, point: SweepPoint, proc: Any) -> None:
        """Preflight, load and save one point (its engine is healthy at `proc.url`)."""
        target = dataclasses.replace(config.target, url=proc.url)
        point_config = dataclasses.replace(config, target=target)
        stage.at("in its preflight")
        with prepare(point_config, profile=profile, echo=echo, gpu_metrics=gpu_metrics) as prep:
            poller = prep.start_poller(lambda m: echo(f"llmtop: warning: {m}"))
            # From here to the snapshot on disk a signal stops the load but waits to end
            # the sweep (raised again when this block is left): the point is kept first.
            with _PointInterrupts(stage) as held:
                stage.at("in its load")
                try:
                    session, _ = drive_session(prep.config, slo, poller.latest, progress, held)
                    c = session.collector  # the scrapes that saw requests in flight
                    load_ns = (
                        c.first_send_ns or session.start_ns or 0,
                        c.last_end_ns or time.perf_counter_ns(),
                    )
                finally:
                    session_series = poller.finish()
                stage.at("as its snapshot was written")
                session.server_series = session_series
                extra = prep.extra
                snap = build_snapshot(session, extra)
                snap["sweep"] = {
                    "engine": engine,
                    "label": point.label,
                    "overrides": [list(o) for o in point.overrides],
                    "argv": proc.public_argv(),
                    "startup_s": proc.startup_s,
                }
                if poller.problem:
                    snap.setdefault("notes", []).append(poller.problem)
                path = save_snapshot(out_path / f"{engine}-{point.slug}.json", snap)
                snaps.append(path)
                row = comparison_row(point.label, snap, load_ns)
                if session.failure:
                    row["error"] = session.failure
                row["failure"] = snap.get("failure")
                rows.append(row)
                print_summary({**snap["summary"], **extra}, stdout)
                echo(f"llmtop: [{n}/{len(points)}] {point.label}: snapshot {path}")
                stage.at("after its snapshot was written")

    def _run_points() -> None:
        for n, point in enumerate(points, 1):
            stage.point(n, point.label)
            stage.at("as its engine was started")
            args = apply_overrides(engine_args, point.overrides)
            echo(f"llmtop: [{n}/{len(points)}] {point.label}: starting {engine} ...")
            stage.at("in its engine's health wait")
            try:
                proc = launch_engine(
                    engine,
                    args,
                    python,
                    port,
                    health_timeout_s,
                    env=env,
                    nice=nice,
                    log_path=out_path / f"{engine}-{point.slug}.log",
                    stop_grace_s=stop_grace_s,
                )
            except EngineStartError as exc:
                if len(points) == 1:
                    raise
                echo(f"llmtop: [{n}/{len(points)}] {point.label}: {exc}")
                rows.append({"config": point.label, "error": redact(str(exc)), "failure": None})
                continue
            with proc:
                echo(
                    f"llmtop: [{n}/{len(points)}] {point.label}: healthy at "
                    f"{proc.url} after {proc.startup_s or 0:.1f} s"
                )
                _measure(n, point, proc)
                stage.at("as its engine was stopped")
            stage.at("after its engine stopped")

    # Held from the start, so that whatever arrives before the sweep's own handler or after
    # it (the comparison's write) waits for a whole file; acted on below.
    with HeldSignals() as late:
        try:
            with _SweepInterrupts(stage, raising=True):  # outside a load: at once
                if late.signals:
                    raise KeyboardInterrupt
                # An engine that is not installed is said before any folder exists.
                engine_command(engine, apply_overrides(engine_args, points[0].overrides), python)
                created = _make_out_dir(out_path)
                _run_points()
        except KeyboardInterrupt:
            for signum in late.signals:
                stage.note(signum)
            if stage.signal is None:  # a KeyboardInterrupt not from our handler
                stage.note(signal.SIGINT)
            if rows and rows[-1]["config"] != stage.label:
                # the point cut before it was measured, beside the ones that were: a row that
                # says so (a sweep that measured nothing writes no comparison at all)
                rows.append({"config": stage.label, **_cut(stage)})
        finally:
            _wrap_up(out_path, rows, created, stdout, echo)
        for signum in late.consume():  # during the comparison's write: the sweep is over
            stage.note(signum)
    if stage.signal is not None:
        wrote = (out_path / "comparison.json").exists() and bool(rows)
        raise Interrupted(_interrupted_line(stage, snaps, out_path, wrote))
    return SweepResult(rows, snaps, out_path)


def _cut(stage: _Stage) -> dict[str, Any]:
    failure = stage.failure()
    return {"error": failure["message"], "failure": failure}
