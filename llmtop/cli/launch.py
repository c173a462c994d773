"""`llmtop launch vllm|trtllm|sim [--profile NAME] [--sweep k=v1,v2] [load options] -- ENGINE ARGS`.

Kept out of the other commands so the engine knowledge stays in `llmtop.engines`. Everything
after `--` goes to the engine verbatim. `sim` is llmtop's own simulated engine
(`python -m llmtop.sim`), so launch and sweep can be tried without a GPU.

A profile supplies the load flags (as for `run`) and its `[engine]` section: `args` are put
before the engine args given here, `model` is the model to serve when none is given, and
`sweep` is the sweep when no `--sweep` is given. Keys are translated to each engine's own flag
names (`max_batch_size` is vLLM's `--max-num-seqs`, trtllm-serve's `--max_batch_size`).
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

import click

from llmtop.cli.options import (
    RunOptions,
    echo_notes,
    load_options,
    parse_slo,
    profile_option,
    workload_options,
)
from llmtop.engines.launch import DEFAULT_HEALTH_TIMEOUT_S, ENGINES, STOP_GRACE_S
from llmtop.errors import ConfigError, LlmtopError
from llmtop.output.writable import HeldSignals, Interrupted
from llmtop.profiles import Profile

_LAUNCH_TARGET = [
    profile_option,
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

# Engine settings under one name in profiles and --sweep, and each engine's flag for it.
# vLLM's names serve the simulator too (it takes vLLM's flags).
_VLLM_FLAGS = {
    "max_batch_size": "--max-num-seqs",
    "max_num_seqs": "--max-num-seqs",
    "max_num_tokens": "--max-num-batched-tokens",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "kv_cache_free_gpu_memory_fraction": "--gpu-memory-utilization",
    "tp": "--tensor-parallel-size",
    "tensor_parallel_size": "--tensor-parallel-size",
}
_TRTLLM_FLAGS = {
    "max_num_seqs": "--max_batch_size",
    "max_batch_size": "--max_batch_size",
    "max_num_batched_tokens": "--max_num_tokens",
    "max_num_tokens": "--max_num_tokens",
    "gpu_memory_utilization": "--kv_cache_free_gpu_memory_fraction",
    "kv_cache_free_gpu_memory_fraction": "--kv_cache_free_gpu_memory_fraction",
    "tp": "--tp_size",
    "tensor_parallel_size": "--tp_size",
}


def engine_flag(engine: str, key: str) -> str:
    """The engine's flag for a setting: `max_batch_size` → `--max-num-seqs` for vLLM.

    A key given as a flag (`--x`) is used as it is; an unknown name becomes `--name` in the
    engine's own style (dashes for vLLM and the simulator, as given for trtllm-serve).
    """
    if key.startswith("-"):
        return key
    norm = key.replace("-", "_")
    if engine == "trtllm":
        return _TRTLLM_FLAGS.get(norm, "--" + key)
    if engine == "sim" and norm in ("tp", "tensor_parallel_size"):
        return "--tp"
    return _VLLM_FLAGS.get(norm, "--" + norm.replace("_", "-"))


def _flag_in(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def profile_engine_args(engine: str, profile: Profile | None, args: list[str]) -> list[str]:
    """The engine args with the profile's `[engine]` (or, for `sim`, `[sim]`) in front; a flag
    given here wins over the profile's."""
    if profile is None:
        return args
    spec = profile.engine or {}
    front: list[str] = []
    extra = spec.get("args")
    if isinstance(extra, list):
        front += [str(a) for a in extra]
    elif isinstance(extra, dict):
        for key, value in extra.items():
            flag = engine_flag(engine, key)
            if _flag_in(args, flag):
                continue
            if isinstance(value, bool):
                front.append(flag if value else flag.replace("--", "--no-", 1))
            else:
                front += [flag, str(value)]
    positional = bool(args) and not args[0].startswith("-")
    model = args[0] if positional else None
    if engine == "sim":  # the simulator's presets come from [sim], not the real model name
        for key in ("engine", "gpu", "model", "tp"):
            given = _flag_in(args, f"--{key}") or (key == "model" and positional)
            if key in profile.sim and not given:
                front += [f"--{key}", str(profile.sim[key])]
    elif model is None and not _flag_in(args, "--model") and spec.get("model"):
        model = str(spec["model"])
    return [*([model] if model else []), *front, *args[1 if positional else 0 :]]


def sweep_specs(engine: str, specs: tuple[str, ...], profile: Profile | None) -> list[str]:
    """`--sweep` given here, else the profile's `[engine] sweep`; keys as the engine's flags."""
    if not specs and profile is not None and (profile.engine or {}).get("sweep"):
        sweep = profile.engine["sweep"]  # type: ignore[index]
        specs = tuple(f"{k}={','.join(str(v) for v in vals)}" for k, vals in sweep.items())
    out = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        out.append(f"{engine_flag(engine, key.strip())}{sep}{values}" if sep else spec)
    return out


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad --engine-env {v!r}: expected NAME=VALUE")
        out[key] = val
    return out


def _target_options(f: Any) -> Any:
    for opt in reversed(_LAUNCH_TARGET):
        f = opt(f)
    return f


@click.command("launch", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("engine", type=click.Choice(ENGINES))
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="Repeat per engine configuration, e.g. max-num-seqs=1,8,64 (repeatable: combined). "
    "Default: the profile's [engine] sweep.",
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
@click.option(
    "--stop-grace",
    type=float,
    default=STOP_GRACE_S,
    show_default=True,
    help="Seconds the engine gets to exit after SIGTERM before it is killed.",
)
@_target_options
@workload_options
@load_options
@click.option("--slo", help="SLO to judge each configuration by.")
@click.option("--progress/--no-progress", default=None, help="Live progress line on stderr.")
@click.pass_context
def launch_command(ctx: click.Context, **o: Any) -> None:
    """Start ENGINE with the args after `--`, load it, stop it; --sweep repeats per config.

    ENGINE is vllm, trtllm, or sim (llmtop's simulated engine: no GPU needed).

    \b
    Examples:
      llmtop launch sim --sweep max-num-seqs=1,8 --concurrency 8 --num-requests 64
      llmtop launch vllm --sweep max-num-seqs=1,8 --concurrency 8 --num-requests 64 \\
          -- facebook/opt-125m --max-model-len 2048
      llmtop launch vllm --profile llama3-8b-tpot-20ms -- --max-model-len 4096
    """
    from llmtop.engines.sweep import sweep_points

    engine = o["engine"]
    engine_args = list(o.pop("engine_args"))
    if engine_args and engine_args[0] == "--":
        engine_args = engine_args[1:]
    opts = RunOptions.from_params(o, ctx, launched=True)
    slo = parse_slo(o.get("slo"))
    engine_args = profile_engine_args(engine, opts.profile, engine_args)
    points = sweep_points(sweep_specs(engine, o["sweeps"], opts.profile))
    config = opts.config()
    echo_notes(opts)
    out_dir = o["out_dir"] or f"llmtop-launch-{dt.datetime.now():%Y%m%d-%H%M%S}"
    progress = o["progress"] if o["progress"] is not None else sys.stderr.isatty()
    # An interrupt ends the sweep with one line and exit 130 (`Interrupted`, from run_sweep);
    # from then on the process is only leaving, and a further signal must not cut that line.
    held = HeldSignals()
    with held:
        try:
            result = _sweep(engine, engine_args, points, config, out_dir, slo, o, opts, progress)
        except Interrupted:
            held.ignore()
            raise
        if held.signals:  # after the sweep's own handlers: every point is already kept
            name = held.first
            held.ignore()
            raise Interrupted(
                f"interrupted by {name} as the sweep ended; every point is kept in {result.out_dir}"
            )
    click.echo(f"llmtop: snapshots and comparison.json in {result.out_dir}", err=True)
    if result.failed:
        names = ", ".join(r["config"] for r in result.failed)
        raise LlmtopError(
            f"{len(result.failed)} of {len(result.rows)} configurations failed: {names}"
        )


def _sweep(
    engine: str,
    engine_args: list[str],
    points: list[Any],
    config: Any,
    out_dir: str,
    slo: Any,
    o: dict[str, Any],
    opts: RunOptions,
    progress: bool,
) -> Any:
    from llmtop.engines.gpu import launch_default
    from llmtop.engines.sweep import run_sweep

    return run_sweep(
        engine,
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
        stop_grace_s=o["stop_grace"],
        progress=progress,
        echo=lambda m: click.echo(m, err=True),
        profile=opts.profile,
        gpu_metrics=launch_default(opts.gpu_metrics),  # the engine runs here: NVML if it works
    )
