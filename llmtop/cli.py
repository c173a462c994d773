"""The command line: click commands that build a configuration and hand it on. No logic."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from llmtop import __version__
from llmtop.config import LoadPlan, RunConfig, Target, Timeouts, Workload
from llmtop.errors import ConfigError, LlmtopError

_INF_WORDS = ("inf", "infinity", "max")


class RateType(click.ParamType):
    """A positive request rate in req/s, or `inf`."""

    name = "RATE"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if text in _INF_WORDS:
            return math.inf
        try:
            rate = float(text)
        except ValueError:
            self.fail(f"{value!r} is not a rate: give req/s (e.g. 2.5) or 'inf'", param, ctx)
        if not rate > 0 or math.isnan(rate):
            self.fail(f"{value!r}: the rate must be > 0 (or 'inf')", param, ctx)
        return rate


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"--{name} must be > 0, got {value:g}")


def _parse_headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        key, sep, val = v.partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"bad --header {v!r}: expected 'Name: value'")
        out.append((key.strip(), val.strip()))
    return tuple(out)


@contextlib.contextmanager
def _target_server(
    url: str | None, sim_engine: str, sim_gpu: str, sim_model: str
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The given URL, or a simulated engine started for this run and stopped after it."""
    if url:
        yield url, None
        return
    try:
        from llmtop.sim.launcher import SimStartError, start_sim
    except ImportError:
        raise ConfigError("no --url given and the built-in simulator is not available") from None
    try:
        handle = start_sim(engine=sim_engine, gpu=sim_gpu, model=sim_model)
    except SimStartError as exc:
        raise LlmtopError(f"the built-in simulator did not start: {exc}") from None
    try:
        yield handle.url, handle.describe()
    finally:
        handle.stop()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmtop")
def cli() -> None:
    """llmtop: a live load tester for LLM inference servers."""


@cli.command()
@click.option("--url", help="Server base URL, e.g. http://localhost:8000. Default: a simulated engine.")
@click.option("--api", type=click.Choice(["completions", "chat"]), default="completions", show_default=True)
@click.option("--model", default="", help="Model name. Default: the first one /v1/models lists.")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Bearer token (or OPENAI_API_KEY); never printed.")
@click.option("--header", "headers", multiple=True, metavar="'K: V'", help="Extra request header (repeatable).")
@click.option("--request-rate", type=RateType(), default="inf", show_default=True, help="Open-loop req/s, or inf.")
@click.option("--burstiness", type=float, default=1.0, show_default=True, help="Gamma shape of arrivals; 1 = Poisson.")
@click.option("--max-concurrency", type=int, help="Cap on requests in flight; the wait for a slot is reported.")
@click.option("--concurrency", type=int, help="Closed loop: keep this many requests in flight instead of a rate.")
@click.option("--duration", type=float, help="Seconds of measured load (after --warmup).")
@click.option("--num-requests", type=int, help="Measured requests to send. Default: 100 when no --duration.")
@click.option("--warmup", type=float, default=0.0, show_default=True, help="Seconds of unmeasured load first.")
@click.option("--input-len", type=int, default=1024, show_default=True, help="Prompt tokens per request.")
@click.option("--output-len", type=int, default=128, show_default=True, help="Output tokens per request.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True, help="Generate exactly --output-len tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds a request may take in all.")
@click.option("--read-timeout", type=float, default=120.0, show_default=True, help="Seconds a stream may stay silent.")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True)
@click.option("--window", type=float, default=10.0, show_default=True, help="Sliding window for live figures (s).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--progress/--no-progress", default=None, help="Live progress line on stderr (default: on a terminal).")
@click.option("--sim-engine", type=click.Choice(["vllm", "trtllm"]), default="vllm", show_default=True, help="Simulated engine flavour when no --url.")
@click.option("--sim-gpu", default="a100-80g", show_default=True, help="Simulated GPU when no --url.")
@click.option("--sim-model", default="llama-3-8b", show_default=True, help="Simulated model when no --url.")
def run(**o: Any) -> None:
    """Run a load headless and report TTFT, TPOT, ITL, E2E and throughput."""
    from llmtop.headless import run_headless
    from llmtop.preflight import preflight

    for name in ("duration", "timeout", "read_timeout", "connect_timeout", "window", "burstiness"):
        _positive(name.replace("_", "-"), o[name])
    for name in ("num_requests", "max_concurrency", "concurrency", "input_len", "output_len"):
        if o[name] is not None and o[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {o[name]}")
    if o["warmup"] < 0:
        raise ConfigError(f"--warmup must be >= 0, got {o['warmup']:g}")
    if o["duration"] is not None and o["num_requests"] is not None:
        raise ConfigError("give --duration or --num-requests, not both")
    if o["concurrency"] is not None and o["max_concurrency"] is not None:
        raise ConfigError("--concurrency (closed loop) and --max-concurrency do not go together")
    num_requests = o["num_requests"]
    if o["duration"] is None and num_requests is None:
        num_requests = 100
    if math.isinf(o["request_rate"]) and o["concurrency"] is None and num_requests is None:
        raise ConfigError("--request-rate inf sends everything at once: give --num-requests")
    plan = LoadPlan(
        request_rate=o["request_rate"],
        burstiness=o["burstiness"],
        max_concurrency=o["max_concurrency"],
        concurrency=o["concurrency"],
        duration_s=o["duration"],
        num_requests=num_requests,
        warmup_s=o["warmup"],
        seed=o["seed"],
    )
    workload = Workload(o["input_len"], o["output_len"], o["ignore_eos"], o["seed"])
    timeouts = Timeouts(o["connect_timeout"], o["timeout"], o["read_timeout"])
    headers = _parse_headers(o["headers"])
    progress = o["progress"] if o["progress"] is not None else sys.stderr.isatty()
    with _target_server(o["url"], o["sim_engine"], o["sim_gpu"], o["sim_model"]) as (url, sim):
        target = Target(url, o["api"], o["model"], o["api_key"] or None, headers, sim)
        config = RunConfig(target, workload, plan, timeouts=timeouts, window_s=o["window"])
        pre = preflight(config)
        target = dataclasses.replace(target, model=pre.model)
        config = dataclasses.replace(
            config, target=target, dialect=pre.dialect, text_prompts=pre.text_prompts
        )
        for note in pre.notes:
            click.echo(f"llmtop: {note}", err=True)
        extra = {
            "config": config.public(),
            "target": target.public(),
            "load": plan.describe(),
            "notes": list(pre.notes),
        }
        result = run_headless(config, extra, o["json_path"], progress)
    if result.failure:
        raise LlmtopError(result.failure.splitlines()[0])
    if result.interrupted:
        click.echo("llmtop: interrupted; the results so far are above"
                   + (f" and in {o['json_path']}" if o["json_path"] else ""), err=True)
        sys.exit(130)
    s = result.summary
    if s["completed"] == 0 and s["failed"] > 0:
        kinds = ", ".join(f"{k} {v}" for k, v in s["errors"].items())
        raise LlmtopError(f"every request failed ({kinds})")


def _register_optional() -> None:
    with contextlib.suppress(ImportError):
        from llmtop.sim.cli import sim_command

        cli.add_command(sim_command, "sim")


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
        click.echo(f"llmtop: internal error: {type(exc).__name__}: {exc} (LLMTOP_DEBUG=1 shows more)", err=True)
        sys.exit(70)
