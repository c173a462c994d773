"""`llmtop [URL]`: open the live UI on a server (or on the built-in simulator without a URL).

`DefaultCommandGroup` makes the UI the group's default command, so `llmtop`,
`llmtop http://host:8000` and `llmtop --slo ...` all open it while `llmtop run ...` and the
other sub-commands keep working. Preflight problems (an unreachable server, a refused key)
end here with a one-line error before the UI takes over the terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
from typing import Any

import click

from llmtop.cli.knee import DurationType
from llmtop.cli.options import (
    RunOptions,
    echo_err,
    make_load_options,
    parse_slo,
    prepared,
    target_options,
    workload_options,
)
from llmtop.errors import ConfigError, LlmtopError, redact
from llmtop.output.writable import check_outputs

UI_START_RATE = 1.0  # req/s when --request-rate is not given: modest, the operator ramps up
UI_DURATION_S = 86_400.0  # "until quit" when neither --duration nor --num-requests is given
WORKER_GRACE_S = 15.0

# The UI's own defaults, shown as such in `llmtop ui --help`.
ui_load_options = make_load_options(
    default_rate=f"{UI_START_RATE:g}",
    duration_help="Seconds of measured load (after --warmup). Default: until you quit.",
    requests_help="Measured requests to send. Default: no limit (until you quit).",
)


class DefaultCommandGroup(click.Group):
    """A group whose default command (the UI) runs when no sub-command is named."""

    default_command = "ui"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = args[0] if args else None
        group_flags = {"-h", "--help", "--version"}
        if first is None or (first not in self.commands and first not in group_flags):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


class RateStepType(click.ParamType):
    """A rate step in percent: `10`, `10%` (per up/down press)."""

    name = "PERCENT"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().removesuffix("%")
        try:
            pct = float(text)
        except ValueError:
            self.fail(f"{value!r}: give a percentage, e.g. 10 or 10%", param, ctx)
        if not 0 < pct <= 100:
            self.fail(f"{value!r}: the rate step must be between 0 and 100 %", param, ctx)
        return pct / 100


@click.command("ui")
@click.argument("target_url", metavar="[URL]", required=False)
@target_options
@workload_options
@ui_load_options
@click.option(
    "--slo",
    help="SLO shown on the gauges and charts, e.g. 'ttft_p99<=1s,tpot_p99<=20ms'"
    " (the l key changes it while the UI runs).",
)
@click.option(
    "--rate-step",
    type=RateStepType(),
    default="10",
    show_default=True,
    help="Percent the rate (or concurrency) changes per up/down press.",
)
@click.option(
    "--save",
    type=click.Path(dir_okay=False),
    help="Write a snapshot here when the UI quits (the `s` key saves one any time).",
)
@click.option(
    "--min-step-s",
    type=float,
    default=None,
    help="The `a` search: least measured time a step holds (default 6).",
)
@click.option(
    "--max-step",
    type=DurationType(),
    default=None,
    help="The `a` search: most measured time a step holds (default 180s).",
)
@click.option(
    "--confirm-s",
    type=DurationType(),
    default=None,
    help="The `a` search: how long the knee is held again before it is called sustained"
    " (default: max(60 s, 20 × E2E p50)).",
)
@click.option(
    "--budget",
    type=DurationType(),
    default=None,
    help="The `a` search: at most this long ('10m'); cut short, the answer is the bracket"
    " found. Default: no bound (a p99 verdict needs ~300 requests a step near the knee).",
)
@click.option("--exit-after", type=float, hidden=True, help="Quit after this many seconds.")
@click.pass_context
def ui_command(ctx: click.Context, target_url: str | None, **o: Any) -> None:
    """Open the live UI: steer the request rate and watch TTFT, TPOT and tokens/s."""
    if target_url:
        if o.get("url") and o["url"] != target_url:
            raise ConfigError("give the URL once: as an argument or with --url")
        o["url"] = target_url
    source = ctx.get_parameter_source("request_rate")
    if source == click.core.ParameterSource.DEFAULT_MAP and math.isinf(o["request_rate"]):
        # an all-at-once profile: the UI steers a rate, so it starts low and the arrows ramp
        echo_err(
            f"llmtop: note: the profile sends all at once; the UI starts at "
            f"{UI_START_RATE:g} req/s instead (the arrows raise it)"
        )
        o["request_rate"] = UI_START_RATE
    sys.exit(run_ui(o, ctx))


def no_terminal() -> bool:
    """The UI reads keys from stdin and draws on stderr (Textual's output): both must be a
    terminal, or it would run blind."""
    return not (sys.stdin.isatty() and sys.stderr.isatty())


def run_ui(o: dict[str, Any], ctx: click.Context | None = None) -> int:
    """Validate, start the simulator or preflight the server, then run the app to the end."""
    from llmtop.session import LoadSession
    from llmtop.tui.app import create_app
    from llmtop.tui.commands import Stop
    from llmtop.tui.model import RunInfo
    from llmtop.tui.worker import SessionDriver

    until_quit = o.get("duration") is None and o.get("num_requests") is None
    opts = RunOptions.from_params(o, ctx, default_requests=None)
    if until_quit:
        opts = dataclasses.replace(opts, duration=UI_DURATION_S)
    if math.isinf(opts.request_rate) and opts.concurrency is None:
        raise ConfigError("the UI steers a finite rate: give --request-rate N (req/s)")
    if o.get("exit_after") is not None and not o["exit_after"] > 0:
        raise ConfigError("--exit-after must be > 0")
    slo = parse_slo(o.get("slo"))
    knee_options = knee_plan_options(o)
    check_outputs({"--save": o.get("save")})  # before the load, not when the UI quits
    if no_terminal():
        raise ConfigError(
            "the live UI needs a terminal (stdin and stderr); for a headless run use "
            "`llmtop run` with the same flags (it prints a table, --json - writes JSON)"
        )
    with prepared(opts) as prep:
        poller = prep.new_poller()
        extra = redact(prep.extra)  # the UI draws through Textual, past the terminal guard
        info = RunInfo.from_extra(
            extra,
            prep.config.plan,
            slo,
            rate_step=o["rate_step"],
            save_path=o.get("save"),
            knee=True,
        )

        def make_session() -> LoadSession:
            return LoadSession(prep.config, slo, server_sample=poller.latest)

        driver = SessionDriver(
            make_session,
            extra,
            save_path=o.get("save"),
            server_series=poller.samples,
            knee_options=knee_options,
        )
        try:
            driver.start()
        except OSError as exc:
            raise LlmtopError(f"cannot start the load process: {exc}") from None
        app = create_app(info, driver, exit_after=o.get("exit_after"))
        # SIGTERM and SIGHUP (the terminal went away) quit like `q`: the load stops, the
        # snapshot is saved.
        quit_on = (signal.SIGTERM, signal.SIGHUP)
        old = {sig: signal.getsignal(sig) for sig in quit_on}
        left = threading.Event()

        def on_quit_signal(*_: object) -> None:
            app.call_later(app.action_quit)
            _leave_anyway(driver, left)

        for sig in quit_on:
            signal.signal(sig, on_quit_signal)
        poller.start()
        try:
            app.run()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if not driver.ran.is_set():  # the app failed before the worker began
                driver.abandon()
            if not driver.done.is_set():  # the app ended without waiting: stop the load now
                driver.send(Stop())
                driver.done.wait(WORKER_GRACE_S)
            poller.stop()
        left.set()
        if app.crashed:
            # one line, with the terminal back; the load is stopped and its results kept
            _epilogue(driver, failed=f"the UI failed ({app.crashed})")
            return 1
        _epilogue(driver)
    return 0


def _leave_anyway(driver: Any, left: threading.Event) -> None:
    """After SIGTERM/SIGHUP, make sure the process ends even if the UI cannot.

    With its terminal gone (a closed SSH session, a killed tmux) Textual's shutdown can block
    for ever writing to it, leaving the load running unseen. So the load is stopped here, off
    the UI's thread, and once it has closed (snapshot saved) the UI gets a few seconds to
    leave the normal way before the process exits 130 without it.
    """
    from llmtop.tui.commands import Stop

    def watch() -> None:
        driver.send(Stop())
        driver.done.wait(WORKER_GRACE_S)
        if not left.wait(5.0):
            os._exit(130)

    threading.Thread(target=watch, name="llmtop-leave", daemon=True).start()


def knee_plan_options(o: dict[str, Any]) -> dict[str, Any]:
    """The `a` search's knobs (KneePlan fields), checked before the load starts."""
    from llmtop.knee.search import KneePlan

    out: dict[str, Any] = {"budget_s": o.get("budget")}
    if o.get("min_step_s") is not None:
        if not 0 < o["min_step_s"] < 86_400:
            raise ConfigError(f"--min-step-s must be > 0, got {o['min_step_s']:g}")
        out["min_step_s"] = o["min_step_s"]
    if o.get("max_step") is not None:
        out["max_step_s"] = o["max_step"]
    if o.get("confirm_s") is not None:
        out["confirm_s"] = o["confirm_s"]
    try:
        KneePlan(**out)  # the same checks the search makes, before the UI opens
    except ValueError as exc:
        raise ConfigError(f"the `a` search: {exc}") from None
    return out


def _epilogue(driver: Any, failed: str | None = None) -> None:
    """What was measured and where it was saved, after the UI; with `failed` (the UI itself
    broke) all of it on one line, which says so first."""
    session = driver.session
    parts = [failed] if failed else []
    if session is not None:
        with contextlib.suppress(Exception):
            c = session.collector.counts
            parts.append(f"{c.completed:,} requests completed, {c.failed:,} failed")
            if session.failure:
                parts.append(f"the load failed: {session.failure.splitlines()[0]}")
    if failed:
        parts.append("the load was stopped")
        if driver.saved:
            parts.append(f"snapshot saved to {driver.saved}")
        click.echo("llmtop: " + "; ".join(redact(p) for p in parts), err=True)
        return
    if parts:
        click.echo("llmtop: " + "; ".join(parts), err=True)
    if driver.saved:
        click.echo(f"llmtop: snapshot saved to {driver.saved}", err=True)
