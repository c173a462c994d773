"""Options shared by `run`, `knee` and the live UI, and the steps that turn them into a run.

Kept apart from `cli.py` so every command takes the same target / workload / load flags and
builds its `RunConfig` the same way (validation, the built-in simulator, the preflight).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import click

from llmtop.config import LengthDist, LoadPlan, RunConfig, Target, Timeouts, Workload
from llmtop.errors import ConfigError, LlmtopError
from llmtop.profiles import LENGTH_ALLOWED, Profile, load_profile, parse_length
from llmtop.slo import Slo, SloError

_INF_WORDS = ("inf", "infinity", "max")
F = Callable[..., Any]


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


class LengthType(click.ParamType):
    """Token length: `2048`, `uniform:1024:3072` or `normal:1024:200` (drawn per request)."""

    name = "N|DIST"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | LengthDist:
        if isinstance(value, LengthDist):
            return value
        try:
            return parse_length(value)
        except (ValueError, TypeError):
            self.fail(f"{value!r}: expected {LENGTH_ALLOWED}", param, ctx)


PROFILE_META = "llmtop.profile"


def _load_profile_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Eager: load the profile first and make its values the defaults of the other flags.

    Click reads `ctx.default_map` for every parameter not given on the command line, so
    flags win over the profile and `ctx.get_parameter_source` tells the two apart.
    """
    if value is None:
        return None
    profile = load_profile(value)
    ctx.default_map = {**(ctx.default_map or {}), **profile.defaults()}
    ctx.meta[PROFILE_META] = profile
    return profile


profile_option = click.option(
    "--profile",
    "profile",
    metavar="PATH|NAME",
    is_eager=True,
    expose_value=True,
    callback=_load_profile_callback,
    help="TOML profile (workload, load plan, SLO, engine); flags given here override it. "
    "A bare NAME picks a shipped profile (profiles/NAME.toml in the source tree).",
)


def _apply(options: list[F]) -> Callable[[F], F]:
    def deco(f: F) -> F:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


target_options = _apply(
    [
        profile_option,
        click.option(
            "--url",
            help="Server base URL, e.g. http://localhost:8000. Default: a simulated engine.",
        ),
        click.option(
            "--api",
            type=click.Choice(["completions", "chat", "triton"]),
            default="completions",
            show_default=True,
        ),
        click.option(
            "--model", default="", help="Model name. Default: the first one /v1/models lists."
        ),
        click.option(
            "--api-key",
            envvar="OPENAI_API_KEY",
            help="Bearer token (or OPENAI_API_KEY); never printed.",
        ),
        click.option(
            "--header",
            "headers",
            multiple=True,
            metavar="'K: V'",
            help="Extra request header (repeatable).",
        ),
        click.option(
            "--sim-engine",
            type=click.Choice(["vllm", "trtllm"]),
            default="vllm",
            show_default=True,
            help="Simulated engine flavour when no --url.",
        ),
        click.option(
            "--sim-gpu", default="a100-80g", show_default=True, help="Simulated GPU when no --url."
        ),
        click.option(
            "--sim-model",
            default="llama-3-8b",
            show_default=True,
            help="Simulated model when no --url.",
        ),
        click.option(
            "--timeout",
            type=float,
            default=600.0,
            show_default=True,
            help="Seconds a request may take in all.",
        ),
        click.option(
            "--read-timeout",
            type=float,
            default=120.0,
            show_default=True,
            help="Seconds a stream may stay silent.",
        ),
        click.option("--connect-timeout", type=float, default=10.0, show_default=True),
    ]
)

workload_options = _apply(
    [
        click.option(
            "--input-len",
            type=LengthType(),
            default=1024,
            show_default=True,
            help="Prompt tokens per request, or a distribution: uniform:MIN:MAX, normal:MEAN:SD.",
        ),
        click.option(
            "--output-len",
            type=LengthType(),
            default=128,
            show_default=True,
            help="Output tokens per request (or a distribution, as --input-len).",
        ),
        click.option(
            "--dataset",
            type=click.Path(dir_okay=False),
            help='Prompts from a file: JSONL {"prompt", "output_len"?} or ShareGPT JSON.',
        ),
        click.option(
            "--dataset-format",
            type=click.Choice(["auto", "jsonl", "sharegpt"]),
            default="auto",
            show_default=True,
        ),
        click.option(
            "--shared-prefix-len",
            type=int,
            default=0,
            show_default=True,
            help="Tokens every synthetic prompt starts with (prefix-cache workloads).",
        ),
        click.option(
            "--ignore-eos/--no-ignore-eos",
            default=True,
            show_default=True,
            help="Generate exactly --output-len tokens.",
        ),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
)

load_options = _apply(
    [
        click.option(
            "--request-rate",
            type=RateType(),
            default="inf",
            show_default=True,
            help="Open-loop req/s, or inf.",
        ),
        click.option(
            "--burstiness",
            type=float,
            default=1.0,
            show_default=True,
            help="Gamma shape of arrivals; 1 = Poisson.",
        ),
        click.option(
            "--max-concurrency",
            type=int,
            help="Cap on requests in flight; the wait for a slot is reported.",
        ),
        click.option(
            "--concurrency",
            type=int,
            help="Closed loop: keep this many requests in flight instead of a rate.",
        ),
        click.option("--duration", type=float, help="Seconds of measured load (after --warmup)."),
        click.option(
            "--num-requests",
            type=int,
            help="Measured requests to send. Default: 100 when no --duration.",
        ),
        click.option(
            "--warmup",
            type=float,
            default=0.0,
            show_default=True,
            help="Seconds of unmeasured load first.",
        ),
        click.option(
            "--window",
            type=float,
            default=10.0,
            show_default=True,
            help="Sliding window for live figures (s).",
        ),
    ]
)


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"--{name} must be > 0, got {value:g}")


def parse_slo(text: str | None) -> Slo:
    """`--slo` as an `Slo`; a bad limit is a one-line ConfigError naming what is allowed."""
    try:
        return Slo.parse(text)
    except SloError as exc:
        raise ConfigError(str(exc)) from None


def parse_headers(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for v in values:
        key, sep, val = v.partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"bad --header {v!r}: expected 'Name: value'")
        out.append((key.strip(), val.strip()))
    return tuple(out)


# Pairs that cannot both be set: when one came from the command line and the other only
# from the profile, the command line wins and the profile's value is dropped.
_EXCLUSIVE = (("duration", "num_requests"), ("concurrency", "max_concurrency"))


def _from_profile(ctx: click.Context | None, name: str) -> bool:
    if ctx is None or name not in ctx.params:
        return False
    return ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT_MAP


def _explicit(ctx: click.Context | None, name: str) -> bool:
    if ctx is None or name not in ctx.params:
        return False
    return ctx.get_parameter_source(name) in (
        click.core.ParameterSource.COMMANDLINE,
        click.core.ParameterSource.ENVIRONMENT,
    )


def apply_profile(o: dict[str, Any], ctx: click.Context | None = None) -> None:
    """Settle profile values against the flags given (the flags win); `validate` calls it.

    Click already filled every flag the user did not give from the profile; what is left is
    the pairs that exclude each other (a profile's `duration` against `--num-requests`, its
    `concurrency` against `--request-rate` / `--max-concurrency`).
    """
    ctx = ctx or click.get_current_context(silent=True)
    if o.get("profile") is None or ctx is None:
        return
    for a, b in _EXCLUSIVE:
        for mine, theirs in ((a, b), (b, a)):
            both = o.get(mine) is not None and o.get(theirs) is not None
            if both and _explicit(ctx, mine) and _from_profile(ctx, theirs):
                o[theirs] = None
    if _explicit(ctx, "request_rate") and _from_profile(ctx, "concurrency"):
        o["concurrency"] = None  # asked for an open loop over a closed-loop profile


def _length(o: dict[str, Any], name: str) -> None:
    """Split a length option into the mean (`name`) and the distribution (`name_dist`)."""
    value = o.get(name)
    key = name.replace("_len", "_dist")
    if isinstance(value, LengthDist):
        o[key] = value
        o[name] = value.mean
    else:
        o.setdefault(key, None)


def validate(o: dict[str, Any], default_requests: int | None = 100) -> None:
    """Reject nonsense values with a one-line error naming the flag."""
    apply_profile(o)
    for name in ("input_len", "output_len"):
        _length(o, name)
    if o.get("shared_prefix_len") is not None and o["shared_prefix_len"] < 0:
        raise ConfigError(f"--shared-prefix-len must be >= 0, got {o['shared_prefix_len']}")
    for name in ("duration", "timeout", "read_timeout", "connect_timeout", "window", "burstiness"):
        if name in o:
            _positive(name.replace("_", "-"), o[name])
    for name in ("num_requests", "max_concurrency", "concurrency", "input_len", "output_len"):
        if o.get(name) is not None and o[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {o[name]}")
    if o.get("warmup", 0) < 0:
        raise ConfigError(f"--warmup must be >= 0, got {o['warmup']:g}")
    if o.get("duration") is not None and o.get("num_requests") is not None:
        raise ConfigError("give --duration or --num-requests, not both")
    if o.get("concurrency") is not None and o.get("max_concurrency") is not None:
        raise ConfigError("--concurrency (closed loop) and --max-concurrency do not go together")
    if o.get("duration") is None and o.get("num_requests") is None:
        o["num_requests"] = default_requests
    rate = o.get("request_rate", math.inf)
    if math.isinf(rate) and o.get("concurrency") is None and o.get("num_requests") is None:
        raise ConfigError("--request-rate inf sends everything at once: give --num-requests")


def build_config(o: dict[str, Any]) -> RunConfig:
    """A RunConfig from validated options; the target URL is filled in by `prepared_run`."""
    plan = LoadPlan(
        request_rate=o.get("request_rate", math.inf),
        burstiness=o.get("burstiness", 1.0),
        max_concurrency=o.get("max_concurrency"),
        concurrency=o.get("concurrency"),
        duration_s=o.get("duration"),
        num_requests=o.get("num_requests"),
        warmup_s=o.get("warmup", 0.0),
        seed=o.get("seed", 0),
    )
    dataset: tuple[tuple[str, int], ...] = ()
    if o.get("dataset"):
        from llmtop.datasets import load_dataset

        dataset = load_dataset(o["dataset"], o.get("dataset_format") or "auto")
    workload = Workload(
        o["input_len"],
        o["output_len"],
        o["ignore_eos"],
        o["seed"],
        input_dist=o.get("input_dist"),
        output_dist=o.get("output_dist"),
        shared_prefix_len=o.get("shared_prefix_len") or 0,
        dataset=str(o.get("dataset") or ""),
    )
    timeouts = Timeouts(o["connect_timeout"], o["timeout"], o["read_timeout"])
    target = Target(
        o.get("url") or "",
        o["api"],
        o["model"],
        o.get("api_key") or None,
        parse_headers(o["headers"]),
    )
    return RunConfig(
        target, workload, plan, timeouts=timeouts, window_s=o.get("window", 10.0), dataset=dataset
    )


# Engine arguments a profile may carry that the simulator understands (trtllm's name first).
_SIM_ARGS = {
    "max_batch_size": "--max-num-seqs",
    "max_num_seqs": "--max-num-seqs",
    "max_num_tokens": "--max-num-batched-tokens",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "kv_cache_free_gpu_memory_fraction": "--gpu-memory-utilization",
}


def sim_args_for(engine: dict[str, Any] | None) -> list[str]:
    """The profile's `[engine] args` the simulator can imitate, as `llmtop sim` flags."""
    args = (engine or {}).get("args")
    if not isinstance(args, dict):
        return []
    out: list[str] = []
    for key, value in args.items():
        flag = _SIM_ARGS.get(key.replace("-", "_").lstrip("_"))
        if flag is None:
            continue
        if isinstance(value, bool):
            out.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            out += [flag, str(value)]
    return out


@contextlib.contextmanager
def _target_server(
    url: str | None, sim_engine: str, sim_gpu: str, sim_model: str, extra_args: tuple[str, ...] = ()
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
        handle = start_sim(engine=sim_engine, gpu=sim_gpu, model=sim_model, extra_args=extra_args)
    except SimStartError as exc:
        raise LlmtopError(f"the built-in simulator did not start: {exc}") from None
    try:
        yield handle.url, handle.describe()
    finally:
        handle.stop()


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    config: RunConfig
    extra: dict[str, Any]  # what every JSON / snapshot carries about the target and plan
    notes: tuple[str, ...]
    engine: Any = None  # llmtop.engines.detect.EngineInfo

    def auth_headers(self) -> dict[str, str]:
        t = self.config.target
        h = dict(t.headers)
        if t.api_key:
            h["Authorization"] = f"Bearer {t.api_key}"
        return h

    def start_poller(self) -> Any:
        """Poll the server's own metrics at ~1 Hz in a thread of this (parent) process."""
        from llmtop.engines.poller import MetricsPoller

        def warn(message: str) -> None:
            click.echo(f"llmtop: warning: {message}", err=True)

        return MetricsPoller.for_engine(self.engine, self.auth_headers(), on_problem=warn).start()


@contextlib.contextmanager
def prepared_run(config: RunConfig, o: dict[str, Any]) -> Iterator[PreparedRun]:
    """Start the simulator if there is no URL, run the preflight, yield the final config."""
    from llmtop.preflight import preflight

    profile: Profile | None = o.get("profile")
    sim_extra = sim_args_for(profile.engine if profile else None)
    with _target_server(o.get("url"), o["sim_engine"], o["sim_gpu"], o["sim_model"], sim_extra) as (
        url,
        sim,
    ):
        target = dataclasses.replace(config.target, url=url, simulated=sim)
        config = dataclasses.replace(config, target=target)
        pre = preflight(config)
        target = dataclasses.replace(target, model=pre.model)
        config = dataclasses.replace(
            config, target=target, dialect=pre.dialect, text_prompts=pre.text_prompts
        )
        for note in pre.notes:
            click.echo(f"llmtop: {note}", err=True)
        from llmtop.engines.detect import detect_engine

        auth = dict(target.headers)
        if target.api_key:
            auth["Authorization"] = f"Bearer {target.api_key}"
        engine = detect_engine(url, auth)
        click.echo(f"llmtop: engine: {engine.label}", err=True)
        extra = {
            "engine": engine.public(),
            "config": config.public(),
            "target": target.public(),
            "load": config.plan.describe(),
            "notes": list(pre.notes),
        }
        if profile is not None:
            extra["profile"] = profile.public()
            if profile.engine:
                extra["engine_config"] = profile.engine
        yield PreparedRun(config, extra, pre.notes, engine)
