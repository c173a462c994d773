"""`llmtop sim`: start the simulated engine from the command line.

Bad input ends with one line on stderr and exit code 2 (no traceback). Once listening, the
command prints one JSON line on stdout, `{"url": ..., "simulated": true, ...}`, which the
launcher reads to learn the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import click

from llmtop.sim.model import ENGINES, GPUS, MODELS, SimConfigError, build_settings


def _fail(message: str) -> NoReturn:
    click.echo(f"llmtop sim: {message}", err=True)
    sys.exit(2)


@click.command("sim", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--engine",
    default="vllm",
    show_default=True,
    help=f"Engine flavour to imitate: {', '.join(ENGINES)}.",
)
@click.option(
    "--gpu", default="a100-80g", show_default=True, help=f"GPU preset: {', '.join(sorted(GPUS))}."
)
@click.option(
    "--model",
    "model",
    default="llama-3-8b",
    show_default=True,
    help=f"Model preset: {', '.join(sorted(MODELS))}.",
)
@click.option("--tp", default=1, show_default=True, type=int, help="Tensor-parallel GPUs.")
@click.option(
    "--max-num-seqs",
    type=int,
    default=None,
    help="Max sequences in a batch (engine default if unset).",
)
@click.option(
    "--max-num-batched-tokens",
    type=int,
    default=None,
    help="Token budget of one iteration (engine default if unset).",
)
@click.option(
    "--enable-chunked-prefill/--no-enable-chunked-prefill",
    default=None,
    help="Split long prompts across iterations (vllm default on, trtllm off).",
)
@click.option(
    "--enable-prefix-caching/--no-enable-prefix-caching",
    default=None,
    help="Reuse the KV blocks of shared prompt prefixes (default on, as vLLM V1 and trtllm).",
)
@click.option(
    "--gpu-memory-utilization",
    type=float,
    default=None,
    help="Share of GPU memory for weights+KV (vllm); of free memory (trtllm).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port; 0 = any free.")
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Seed for natural (EOS) output lengths."
)
@click.option(
    "--time-scale",
    default=1.0,
    type=float,
    hidden=True,
    help="Run the simulated clock this many times faster (tests only).",
)
@click.option(
    "--event-loop",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    hidden=True,
    help="Event loop for the server (benchmarks).",
)
def sim_command(
    engine: str,
    gpu: str,
    model: str,
    tp: int,
    max_num_seqs: int | None,
    max_num_batched_tokens: int | None,
    enable_chunked_prefill: bool | None,
    enable_prefix_caching: bool | None,
    gpu_memory_utilization: float | None,
    host: str,
    port: int,
    seed: int,
    time_scale: float,
    event_loop: str,
) -> None:
    """Start a simulated vLLM / TensorRT-LLM server (OpenAI-compatible, labelled simulated)."""
    try:
        settings = build_settings(
            engine=engine,
            gpu=gpu,
            model=model,
            tp=tp,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_chunked_prefill=enable_chunked_prefill,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
        )
    except SimConfigError as e:
        _fail(str(e))
    if not 0 <= port <= 65535:
        _fail(f"bad --port {port}; valid: 0 (any free port) or 1-65535")
    if time_scale <= 0:
        _fail(f"bad --time-scale {time_scale}; valid: > 0")
    runner = _runner(event_loop)
    try:
        runner(_main(settings, host, port, time_scale))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            _fail(f"port {port} on {host} is in use; pick another --port, or 0 for any free")
        _fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    except KeyboardInterrupt:
        pass


def _runner(kind: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """asyncio.run or uvloop.run; `auto` prefers uvloop (cheaper transport writes)."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.run  # type: ignore[no-any-return]
        except ImportError:
            if kind == "uvloop":
                _fail("--event-loop uvloop: uvloop is not installed; valid: asyncio")
    return asyncio.run


async def _main(settings: object, host: str, port: int, time_scale: float) -> None:
    from llmtop.sim.model import SimSettings
    from llmtop.sim.server import SimServer

    assert isinstance(settings, SimSettings)
    server = SimServer(settings, time_scale=time_scale)
    bound = await server.start(host, port)
    # Long-lived objects out of the collector's sight, and fewer young-generation passes:
    # a full collection in the middle of a step is a millisecond of lateness.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)
    shown = f"[{host}]" if ":" in host else host
    info = {"url": f"http://{shown}:{bound}", **server.describe()}
    click.echo(json.dumps(info), nl=True)
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
