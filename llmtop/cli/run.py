"""`llmtop run`: drive a load to its end headless and report, surviving Ctrl-C and SIGTERM."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import click

from llmtop import __version__
from llmtop.cli.options import (
    RunOptions,
    load_options,
    parse_slo,
    prepared,
    target_options,
    workload_options,
)
from llmtop.cli.repeat import repeat_option, run_repeated
from llmtop.config import RunConfig
from llmtop.errors import EXIT_SLO_BREACHED, LlmtopError
from llmtop.output.console import (
    ProgressLine,
    client_bottleneck,
    print_summary,
    write_json_output,
)
from llmtop.output.exports import RequestLog
from llmtop.output.snapshot import build_snapshot, save_snapshot
from llmtop.output.writable import HeldSignals, check_outputs, write_each
from llmtop.session import Interrupts, LoadSession, drive
from llmtop.slo import Slo


@dataclass
class HeadlessResult:
    summary: dict[str, Any]
    interrupted: bool
    failure: str | None = None
    notes: list[str] = field(default_factory=list)
    output_errors: list[str] = field(default_factory=list)  # outputs that could not be written


def run_headless(
    config: RunConfig,
    extra: dict[str, Any],
    json_path: str | None,
    progress: bool,
    slo: Slo | None = None,
    server_sample: Any = None,
    server_samples: Any = None,
    save_path: str | None = None,
    requests_path: str | None = None,
) -> HeadlessResult:
    """Run the load to its end (or to Ctrl-C), then print and save what was measured."""
    session = LoadSession(config, slo, server_sample=server_sample)
    log = RequestLog(requests_path) if requests_path else None
    line = ProgressLine(progress)

    def on_frame(frame: Any) -> None:
        line.show(frame)

    with Interrupts() as interrupts:
        session.start()
        if log is not None:
            log.start_ns = session.start_ns
            session.record_sink = log.on_record
        try:
            ended = drive(session, on_frame, interrupts)
        finally:
            line.clear()
    if server_samples is not None:
        session.server_series = server_samples()
    return report_headless(
        session, ended.interrupted, extra, json_path, save_path, log, requests_path
    )


def report_headless(
    session: LoadSession,
    interrupted: bool,
    extra: dict[str, Any],
    json_path: str | None,
    save_path: str | None = None,
    log: RequestLog | None = None,
    requests_path: str | None = None,
    more: dict[str, Any] | None = None,
) -> HeadlessResult:
    """The summary of a finished session (with `more` in it), its outputs and its table."""
    if log is not None:
        log.close()
    summary = session.summary()
    summary.update(extra)
    summary.update(more or {})
    summary["llmtop_version"] = __version__
    summary["interrupted"] = interrupted
    if session.stopped is not None:
        summary["stop_reason"] = session.stopped.reason
    summary["bottleneck"] = client_bottleneck(summary)
    result = HeadlessResult(summary, interrupted, session.failure)
    human = sys.stderr if json_path == "-" else sys.stdout  # `--json -`: stdout is the JSON
    # Each output on its own: one that fails costs neither the others nor the table.
    failed = write_each(
        [
            ("--json", json_path, lambda: write_json_output(json_path, summary)),
            (
                "--save",
                save_path,
                lambda: save_snapshot(save_path, _snapshot(session, extra, more)),
            ),
        ]
    )
    result.output_errors = list(failed.values())
    if log is not None and log.error:
        result.output_errors.append(
            f"cannot write --save-requests {requests_path}: {log.error} (after {log.count} "
            "requests); the other outputs were written"
        )
    print_summary(summary, human)
    if save_path and "--save" not in failed:
        human.write(f"snapshot    {save_path}\n")
    return result


def _snapshot(
    session: LoadSession, extra: dict[str, Any], more: dict[str, Any] | None
) -> dict[str, Any]:
    """The session's snapshot; `more` (the repeats) in its summary too."""
    snap = build_snapshot(session, extra)
    snap["summary"].update(more or {})
    return snap


@click.command("run")
@target_options
@workload_options
@load_options
@click.option(
    "--slo", help="SLO to judge the run by, e.g. 'ttft_p99<=1s,tpot_p99<=20ms,error_rate<=1%'."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write the results as JSON here ('-': to stdout, the table then goes to stderr).",
)
@click.option(
    "--save",
    "save_path",
    type=click.Path(dir_okay=False),
    help="Write a snapshot here (for llmtop compare / report).",
)
@click.option(
    "--save-requests",
    "requests_path",
    type=click.Path(dir_okay=False),
    help="Write one JSON line per request here.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Live progress line on stderr (default: on a terminal).",
)
@repeat_option
def run_command(**o: Any) -> None:
    """Run a load headless and report TTFT, TPOT, ITL, E2E and throughput."""
    opts = RunOptions.from_params(o)
    slo = parse_slo(o.get("slo"))
    progress = o["progress"] if o["progress"] is not None else sys.stderr.isatty()
    outputs = {"--json": o["json_path"], "--save": o["save_path"]}
    check_outputs({**outputs, "--save-requests": o["requests_path"]})  # before any load
    with prepared(opts) as prep:
        poller = prep.start_poller(lambda m: click.echo(f"llmtop: warning: {m}", err=True))
        # from here to the last output a signal outside the load (whose own Interrupts
        # stop it gracefully) waits for the outputs, then counts as an interruption
        with HeldSignals() as held:
            try:
                if o["repeat"] > 1:  # docs/repeat.md
                    rep = run_repeated(prep, o["repeat"], progress, slo, poller, o["requests_path"])
                    result = report_headless(
                        rep.session,
                        rep.interrupted,
                        prep.extra,
                        o["json_path"],
                        o["save_path"],
                        rep.log,
                        o["requests_path"],
                        more=rep.more,
                    )
                else:
                    result = run_headless(
                        prep.config,
                        prep.extra,
                        o["json_path"],
                        progress,
                        slo,
                        server_sample=poller.latest,
                        server_samples=poller.finish,
                        save_path=o["save_path"],
                        requests_path=o["requests_path"],
                    )
            finally:
                poller.stop()
                late = held.consume()
    if late:
        result.interrupted = True
    if result.failure or result.output_errors:
        first = [result.failure.splitlines()[0]] if result.failure else []
        raise LlmtopError("; ".join(first + result.output_errors))
    if result.interrupted:
        json_to = "on stdout" if o["json_path"] == "-" else f"in {o['json_path']}"
        where = f" and {json_to}" if o["json_path"] else ""
        click.echo(f"llmtop: interrupted; the results so far are above{where}", err=True)
        sys.exit(130)
    s = result.summary
    if s["completed"] == 0 and s["failed"] > 0:
        kinds = ", ".join(f"{k} {v}" for k, v in s["errors"].items())
        raise LlmtopError(f"every request failed ({kinds})")
    verdict = s.get("slo") if slo else None
    if isinstance(verdict, dict) and verdict.get("ok") is False:
        # the SLO as a CI gate (README, "Exit codes"): every output was written above
        broken = ", ".join(
            f"{lim['limit']} ({lim['value']:.4g})"
            for lim in verdict.get("limits", [])
            if not lim.get("ok")
        )
        click.echo(f"llmtop: the SLO was breached: {broken}", err=True)
        sys.exit(EXIT_SLO_BREACHED)
