"""`llmtop launch vllm|trtllm [--sweep k=v1,v2] [load options] -- ENGINE ARGS`.

Kept out of `cli.py` so the engine knowledge stays in `llmtop.engines`; the lead registers
`launch_command` as `llmtop launch`. Everything after `--` goes to the engine verbatim.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click

from llmtop.cli.options import RunOptions, echo_err, load_options, parse_slo, workload_options
from llmtop.engines.launch import DEFAULT_HEALTH_TIMEOUT_S, ENGINES
from llmtop.errors import ConfigError, LlmtopError

_LAUNCH_TARGET = [
    click.option(
        "--api",
        type=click.Choice(["completions", "chat"]),
        default="completions",
        show_default=True,
    ),
    click.option("--model", default="", help="Model name. Default: the one the engine serves."),
    click.option(
        "--api-key", envvar="OPENAI_API_KEY", help="Bearer token, if the engine wants one."
    ),
    click.option("--header", "headers", multiple=True, metavar="'K: V'", help="Extra header."),
    click.option("--timeout", type=float, default=600.0, show_default=True),
    click.option("--read-timeout", type=float, default=120.0, show_default=True),
    click.option("--connect-timeout", type=float, default=10.0, show_default=True),
]


def _target_options(f: Any) -> Any:
    for opt in reversed(_LAUNCH_TARGET):
        f = opt(f)
    return f


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad --engine-env {v!r}: expected NAME=VALUE")
        out[key] = val
    return out


@click.command("launch", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine", type=click.Choice(ENGINES))
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="Repeat per engine configuration, e.g. max-num-seqs=1,8,64 (repeatable: combined).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder for one snapshot per configuration. Default: ./llmtop-launch-<time>.",
)
@click.option(
    "--engine-python",
    type=click.Path(dir_okay=False),
    help="The Python of the engine's venv (runs `-m vllm.entrypoints.openai.api_server`).",
)
@click.option("--engine-port", type=int, help="Port for the engine. Default: a free one.")
@click.option(
    "--engine-env", multiple=True, metavar="NAME=VALUE", help="Environment for the engine."
)
@click.option("--engine-nice", type=int, default=0, help="Scheduling priority for the engine.")
@click.option(
    "--health-timeout",
    type=float,
    default=DEFAULT_HEALTH_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the engine's /health.",
)
@_target_options
@workload_options
@load_options
@click.option("--slo", help="SLO to judge each configuration by.")
@click.option("--progress/--no-progress", default=None, help="Live progress line on stderr.")
def launch_command(**o: Any) -> None:
    """Start ENGINE with the args after `--`, load it, stop it; --sweep repeats per config.

    \b
    Example:
      llmtop launch vllm --sweep max-num-seqs=1,8 --concurrency 8 --num-requests 64 \\
          -- facebook/opt-125m --max-model-len 2048
    """
    from llmtop.engines.sweep import run_sweep, sweep_points

    engine_args = list(o.pop("engine_args"))
    if engine_args and engine_args[0] == "--":
        engine_args = engine_args[1:]
    opts = RunOptions.from_params(o)
    slo = parse_slo(o.get("slo"))
    points = sweep_points(o["sweeps"])
    config = opts.config()
    out_dir = o["out_dir"] or f"llmtop-launch-{dt.datetime.now():%Y%m%d-%H%M%S}"
    progress = o["progress"] if o["progress"] is not None else sys.stderr.isatty()
    result = run_sweep(
        o["engine"],
        engine_args,
        points,
        config,
        out_dir,
        slo=slo,
        python=o["engine_python"],
        port=o["engine_port"],
        health_timeout_s=o["health_timeout"],
        env=_env_pairs(o["engine_env"]),
        nice=o["engine_nice"],
        progress=progress,
        echo=echo_err,
        profile=opts.profile,
    )
    click.echo(f"llmtop: snapshots and comparison.json in {result.out_dir}", err=True)
    if result.failed:
        names = ", ".join(r["config"] for r in result.failed)
        raise LlmtopError(
            f"{len(result.failed)} of {len(result.rows)} configurations failed: {names}"
        )
