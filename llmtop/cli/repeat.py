"""`llmtop run --repeat N`: the same workload N times, the server drained between runs
(issue 11, docs/repeat.md).

Every run is its own load session on the same configuration, so the same seed gives the
same schedule and prompts: the spread between runs is the server's and the system's. After
the last run the sessions are pooled (`llmtop.metrics.repeats.PooledCollector`) into the
last one, so the table, `--json`, `--save` and `--slo` speak for every request, and the
`"repeats"` block adds each headline figure per run, its mean and 95 % intervals.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click

from llmtop.engines.detect import EngineInfo
from llmtop.engines.poller import MetricsPoller
from llmtop.errors import ConfigError
from llmtop.knee.stats import mean_ci, quantile_ci_ranks
from llmtop.metrics.figures import run_figures
from llmtop.metrics.intervals import IntervalRecorder
from llmtop.metrics.repeats import Estimators, PooledCollector, RunResult, repeats_block, run_result
from llmtop.metrics.telemetry import SeriesPoint
from llmtop.output.console import ProgressLine
from llmtop.output.exports import RequestLog
from llmtop.session import Interrupts, LoadSession, drive
from llmtop.setup import PreparedRun
from llmtop.slo import Slo

MAX_REPEAT = 100
DRAIN_TIMEOUT_S = 60.0  # the longest wait for the server's running/waiting gauges to read 0
DRAIN_POLL_S = 0.25
ESTIMATORS = Estimators(mean_ci, quantile_ci_ranks)
Echo = Callable[[str], None]


class RepeatType(click.ParamType):
    """`--repeat N`: 1 <= N <= MAX_REPEAT; anything else is one line (a ConfigError)."""

    name = "N"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            n = int(str(value).strip())
        except ValueError:
            raise ConfigError(
                f"--repeat {value!r}: give a number of runs (1 to {MAX_REPEAT})"
            ) from None
        if not 1 <= n <= MAX_REPEAT:
            raise ConfigError(f"--repeat must be between 1 and {MAX_REPEAT}, got {n}")
        return n


repeat_option = click.option(
    "--repeat",
    "repeat",
    type=RepeatType(),
    default="1",
    show_default=True,
    help="Run the same workload N times (same seed, the server drained between runs) and "
    "report each headline figure's mean and 95% confidence interval across runs.",
)


def wait_drained(
    engine: EngineInfo,
    headers: Mapping[str, str],
    interrupts: Interrupts,
    timeout_s: float = DRAIN_TIMEOUT_S,
    poll_s: float = DRAIN_POLL_S,
) -> str:
    """Wait until the server's running and waiting gauges read 0 (our requests are done:
    the last session closed its load process); a note saying what was seen."""
    poller = MetricsPoller.for_engine(engine, headers)
    started = time.monotonic()
    while True:
        sample = None if poller.given_up else poller.poll_once()
        running = (sample or {}).get("running")
        waiting = (sample or {}).get("waiting")
        if running is None and waiting is None:
            return "the server shows no running/waiting gauges: waited only for our own requests"
        waited = time.monotonic() - started
        if not (running or 0) + (waiting or 0):
            return f"server drained ({waited:.1f} s)"
        if waited >= timeout_s or interrupts.count:
            return (
                f"the server still had {running or 0:g} running and {waiting or 0:g} waiting "
                f"after {waited:.0f} s; started anyway"
            )
        time.sleep(poll_s)


def between_runs(prep: PreparedRun, interrupts: Interrupts, echo: Echo) -> tuple[str, ...]:
    """Drain, then empty the prefix cache (a reset fails while requests hold blocks)."""
    notes = [wait_drained(prep.engine, prep.config.target.auth_headers(), interrupts)]
    done, note = prep.reset_prefix_cache()
    note = note.removeprefix("--reset-prefix-cache: ")
    notes.append(note if done else f"prefix cache not reset: {note}")
    for n in notes:
        echo(f"llmtop: {n}")
    return tuple(notes)


@dataclass
class _Timeline:
    """Each run's 1-second series and intervals, moved onto the first run's clock."""

    start_ns: int = 0
    series: list[SeriesPoint] = dataclasses.field(default_factory=list)
    intervals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    worker_events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, session: LoadSession) -> None:
        if not self.start_ns:
            self.start_ns = session.start_ns
        shift_s = (session.start_ns - self.start_ns) / 1e9
        self.series += [
            dataclasses.replace(p, t_s=round(p.t_s + shift_s, 3)) for p in session.series
        ]
        session.interval_recorder.flush()
        for iv in session.interval_recorder.intervals:
            moved = {k: round(iv[k] + shift_s, 3) for k in ("start_s", "end_s")}
            self.intervals.append({**iv, **moved})
        self.worker_events += session.worker_events


@dataclass
class _ClientSide:
    """The load processes' own figures over every run: each run has a fresh load process,
    so CPU time and receive stamps add up, and the guard's verdict is the first run's that
    found the client bound (one such run is enough to doubt the pooled figures)."""

    kernel_stamps: int = 0
    user_stamps: int = 0
    bound: dict[str, Any] | None = None

    def add(self, session: LoadSession, k: int) -> None:
        if session.status is not None:
            self.kernel_stamps += session.status.kernel_stamps
            self.user_stamps += session.status.user_stamps
        verdict = session.process.book.run_verdict()
        if verdict.bound and self.bound is None:
            self.bound = {**verdict.as_dict(), "run": k}

    def summary(self, runs: list[RunResult]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "load_cpu_s": sum(r.load_cpu_s for r in runs),
            "receive_stamps": {"kernel": self.kernel_stamps, "user": self.user_stamps},
        }
        if self.bound is not None:
            out["client_saturation"] = self.bound
        return out


@dataclass
class Repeated:
    """The pooled session (the last run's, holding every run) and the `"repeats"` block."""

    session: LoadSession
    interrupted: bool
    more: dict[str, Any]
    log: RequestLog | None


def run_repeated(
    prep: PreparedRun,
    n: int,
    progress: bool,
    slo: Slo | None,
    poller: MetricsPoller,
    requests_path: str | None = None,
    echo: Echo = lambda m: click.echo(m, err=True),
) -> Repeated:
    """Run the prepared workload n times; stop early on Ctrl-C (that run's part is kept) or
    a failed load. `--save-requests` gets every run's requests, `step` being the run (0-based)."""
    config = prep.config
    slo = slo or Slo()
    pooled = PooledCollector(config.window_s, slo.per_request_limits_ms())
    timeline = _Timeline()
    client = _ClientSide()
    log = RequestLog(requests_path) if requests_path else None
    line = ProgressLine(progress)
    runs: list[RunResult] = []
    interrupted = False
    session: LoadSession | None = None
    with Interrupts() as interrupts:
        for k in range(1, n + 1):
            notes = between_runs(prep, interrupts, echo) if k > 1 else ()
            if interrupts.count:  # between two runs: the runs so far are the results
                interrupted = True
                if session is not None:
                    session.interrupted_by = interrupts.last or "an interrupt"
                break
            session = LoadSession(config, slo, server_sample=poller.latest)
            session.start()
            if log is not None:
                log.start_ns = log.start_ns or session.start_ns
                session.record_sink = lambda rec, _step, run=k - 1: log.on_record(rec, run)
            try:
                ended = drive(session, line.show, interrupts)
            finally:
                line.clear()
            interrupted = ended.interrupted
            complete = not interrupted and session.failure is None
            cpu_s = session.status.load_cpu_s if session.status else 0.0
            runs.append(run_result(k, run_figures(session.collector), complete, notes, cpu_s))
            pooled.add_run(session.collector, f"run {k}")
            timeline.add(session)
            client.add(session, k)
            echo(_run_line(runs[-1], n))
            if not complete:
                break
    assert session is not None  # the first run always starts
    session.server_series = poller.finish()
    session.collector = pooled  # the last session now speaks for every run
    session.start_ns = timeline.start_ns
    session.series = timeline.series
    session.interval_recorder = IntervalRecorder()
    session.interval_recorder.intervals = timeline.intervals
    session.worker_events = timeline.worker_events
    block = repeats_block(runs, run_figures(pooled), n, ESTIMATORS)
    return Repeated(session, interrupted, {"repeats": block, **client.summary(runs)}, log)


def _run_line(r: RunResult, n: int) -> str:
    state = "" if r.complete else " (stopped early)"
    return (
        f"llmtop: run {r.index}/{n}: {r.completed} done, {r.failed} failed in "
        f"{r.duration_s:.2f} s, TTFT p99 {r.values['ttft_p99']:.2f} ms, "
        f"{r.values['request_throughput']:.2f} req/s{state}"
    )
