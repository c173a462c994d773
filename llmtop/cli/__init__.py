"""The command line: click commands that build a configuration and hand it on. No logic."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from llmtop import __version__
from llmtop.cli.options import (
    build_config,
    load_options,
    parse_slo,
    prepared_run,
    target_options,
    validate,
    workload_options,
)
from llmtop.cli.ui import DefaultCommandGroup, ui_command
from llmtop.errors import LlmtopError


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmtop")
def cli() -> None:
    """llmtop: a live load tester for LLM inference servers.

    `llmtop [URL]` opens the live UI (against a simulated engine when no URL is given).
    """


@cli.command()
@target_options
@workload_options
@load_options
@click.option(
    "--slo", help="SLO to judge the run by, e.g. 'ttft_p99<=1s,tpot_p99<=20ms,error_rate<=1%'."
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON here."
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
def run(**o: Any) -> None:
    """Run a load headless and report TTFT, TPOT, ITL, E2E and throughput."""
    from llmtop.cli.run import run_headless

    validate(o)
    slo = parse_slo(o.get("slo"))
    config = build_config(o)
    progress = o["progress"] if o["progress"] is not None else sys.stderr.isatty()
    with prepared_run(config, o) as prep:
        poller = prep.start_poller()
        try:
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
    if result.failure:
        raise LlmtopError(result.failure.splitlines()[0])
    if result.interrupted:
        where = f" and in {o['json_path']}" if o["json_path"] else ""
        click.echo(f"llmtop: interrupted; the results so far are above{where}", err=True)
        sys.exit(130)
    s = result.summary
    if s["completed"] == 0 and s["failed"] > 0:
        kinds = ", ".join(f"{k} {v}" for k, v in s["errors"].items())
        raise LlmtopError(f"every request failed ({kinds})")


def _register_optional() -> None:
    cli.add_command(ui_command, "ui")
    with contextlib.suppress(ImportError):
        from llmtop.cli.knee import knee_command

        cli.add_command(knee_command, "knee")
    with contextlib.suppress(ImportError):
        from llmtop.sim.cli import sim_command

        cli.add_command(sim_command, "sim")
    with contextlib.suppress(ImportError):
        from llmtop.cli.snapshots import compare_command, report_command

        cli.add_command(compare_command, "compare")
        cli.add_command(report_command, "report")
    with contextlib.suppress(ImportError):
        from llmtop.cli.launch import launch_command

        cli.add_command(launch_command, "launch")


_register_optional()


def main() -> None:
    """Entry point: one-line errors, never a traceback, for anything the user can fix."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("llmtop: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except LlmtopError as exc:
        click.echo(f"llmtop: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("llmtop: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except SystemExit:
        raise
    except Exception as exc:  # a bug of ours: still one line, with a way to see more
        if os.environ.get("LLMTOP_DEBUG"):
            raise
        click.echo(
            f"llmtop: internal error: {type(exc).__name__}: {exc} (LLMTOP_DEBUG=1 shows more)",
            err=True,
        )
        sys.exit(70)
