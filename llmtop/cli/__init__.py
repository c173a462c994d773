"""The command line: the `llmtop` group, its commands, and one-line errors. No logic here.

Each command lives in a module of its own (run, ui, knee, snapshots, launch); shared flags and
their validation in `llmtop.cli.options`.
"""

from __future__ import annotations

import os
import sys

import click

from llmtop import __version__
from llmtop.cli.ui import DefaultCommandGroup, ui_command
from llmtop.errors import LlmtopError, register_secrets_from_argv
from llmtop.output.terminal import guard_terminal


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmtop")
def cli() -> None:
    """llmtop: a live load tester for LLM inference servers.

    `llmtop [URL]` opens the live UI (against a simulated engine when no URL is given).
    """


def _register() -> None:
    """Every command, imported plainly: a broken module is an error, never a missing command."""
    from llmtop.cli.knee import knee_command
    from llmtop.cli.launch import launch_command
    from llmtop.cli.profiles import profiles_command
    from llmtop.cli.run import run_command
    from llmtop.cli.snapshots import compare_command, export_command, report_command
    from llmtop.sim.cli import sim_command

    for name, command in (
        ("run", run_command),
        ("ui", ui_command),
        ("knee", knee_command),
        ("sim", sim_command),
        ("compare", compare_command),
        ("report", report_command),
        ("export", export_command),
        ("launch", launch_command),
        ("profiles", profiles_command),
    ):
        cli.add_command(command, name)


_register()


def main() -> None:
    """Entry point: one-line errors, never a traceback, for anything the user can fix.

    Every secret on the command line and in the environment is registered, and the terminal
    guarded, before anything is parsed or printed (llmtop.errors.redact).
    """
    register_secrets_from_argv(sys.argv[1:])
    guard_terminal()
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
