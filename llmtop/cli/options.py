"""Options shared by `run`, `knee`, `launch` and the live UI, validated into ONE typed object.

Every command takes the same target / workload / load flags and turns them into a
`RunOptions` through `RunOptions.from_params` (the one place flags are checked against each
other), then into a `RunConfig` and a prepared target (`llmtop.setup.prepare`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click

from llmtop.config import LengthDist, LoadPlan, RunConfig, Target, Timeouts, Workload
from llmtop.errors import ConfigError
from llmtop.profiles import LENGTH_ALLOWED, Profile, load_profile, parse_length
from llmtop.setup import PreparedRun, SimChoice, prepare
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


def _settle_profile(o: dict[str, Any], ctx: click.Context | None) -> None:
    """Settle profile values against the flags given (the flags win).

    Click already filled every flag the user did not give from the profile; what is left is
    the pairs that exclude each other (a profile's `duration` against `--num-requests`, its
    `concurrency` against `--request-rate` / `--max-concurrency`).
    """
    if o.get("profile") is None or ctx is None:
        return
    for a, b in _EXCLUSIVE:
        for mine, theirs in ((a, b), (b, a)):
            both = o.get(mine) is not None and o.get(theirs) is not None
            if both and _explicit(ctx, mine) and _from_profile(ctx, theirs):
                o[theirs] = None
    if _explicit(ctx, "request_rate") and _from_profile(ctx, "concurrency"):
        o["concurrency"] = None  # asked for an open loop over a closed-loop profile


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The target, workload and load flags of one run, validated (see `from_params`)."""

    # target
    url: str = ""
    api: str = "completions"
    model: str = ""
    api_key: str | None = dataclasses.field(default=None, repr=False)
    headers: tuple[str, ...] = ()
    sim_engine: str = "vllm"
    sim_gpu: str = "a100-80g"
    sim_model: str = "llama-3-8b"
    timeout: float = 600.0
    read_timeout: float = 120.0
    connect_timeout: float = 10.0
    # workload
    input_len: int | LengthDist = 1024
    output_len: int | LengthDist = 128
    dataset: str | None = None
    dataset_format: str = "auto"
    shared_prefix_len: int = 0
    ignore_eos: bool = True
    seed: int = 0
    # load plan
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    concurrency: int | None = None
    duration: float | None = None
    num_requests: int | None = None
    warmup: float = 0.0
    window: float = 10.0
    profile: Profile | None = None

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        ctx: click.Context | None = None,
        default_requests: int | None = 100,
    ) -> RunOptions:
        """Validate click's parameters (extra keys are ignored): one-line errors naming flags."""
        names = {f.name for f in dataclasses.fields(cls)}
        o = {k: v for k, v in params.items() if k in names}
        o["url"] = o.get("url") or ""
        o["headers"] = tuple(o.get("headers") or ())
        o["shared_prefix_len"] = o.get("shared_prefix_len") or 0
        _settle_profile(o, ctx or click.get_current_context(silent=True))
        opts = cls(**o)
        opts._check()
        if opts.duration is None and opts.num_requests is None:
            opts = dataclasses.replace(opts, num_requests=default_requests)
        if math.isinf(opts.request_rate) and opts.concurrency is None and opts.num_requests is None:
            raise ConfigError("--request-rate inf sends everything at once: give --num-requests")
        return opts

    def _check(self) -> None:
        if self.shared_prefix_len < 0:
            raise ConfigError(f"--shared-prefix-len must be >= 0, got {self.shared_prefix_len}")
        for name in ("duration", "timeout", "read_timeout", "connect_timeout", "window"):
            _positive(name.replace("_", "-"), getattr(self, name))
        _positive("burstiness", self.burstiness)
        for name in ("num_requests", "max_concurrency", "concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("input_len", "output_len"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup:g}")
        if self.duration is not None and self.num_requests is not None:
            raise ConfigError("give --duration or --num-requests, not both")
        if self.concurrency is not None and self.max_concurrency is not None:
            raise ConfigError(
                "--concurrency (closed loop) and --max-concurrency do not go together"
            )
        parse_headers(self.headers)

    def sim(self) -> SimChoice:
        return SimChoice(self.sim_engine, self.sim_gpu, self.sim_model)

    def config(self) -> RunConfig:
        """The RunConfig; the target URL is filled in by `prepared` when the simulator runs."""
        plan = LoadPlan(
            request_rate=self.request_rate,
            burstiness=self.burstiness,
            max_concurrency=self.max_concurrency,
            concurrency=self.concurrency,
            duration_s=self.duration,
            num_requests=self.num_requests,
            warmup_s=self.warmup,
            seed=self.seed,
        )
        dataset: tuple[tuple[str, int], ...] = ()
        if self.dataset:
            from llmtop.datasets import load_dataset

            dataset = load_dataset(self.dataset, self.dataset_format or "auto")
        in_dist = self.input_len if isinstance(self.input_len, LengthDist) else None
        out_dist = self.output_len if isinstance(self.output_len, LengthDist) else None
        workload = Workload(
            in_dist.mean if in_dist else int(self.input_len),  # type: ignore[arg-type]
            out_dist.mean if out_dist else int(self.output_len),  # type: ignore[arg-type]
            self.ignore_eos,
            self.seed,
            input_dist=in_dist,
            output_dist=out_dist,
            shared_prefix_len=self.shared_prefix_len,
            dataset=str(self.dataset or ""),
        )
        timeouts = Timeouts(self.connect_timeout, self.timeout, self.read_timeout)
        target = Target(
            self.url, self.api, self.model, self.api_key or None, parse_headers(self.headers)
        )
        return RunConfig(
            target, workload, plan, timeouts=timeouts, window_s=self.window, dataset=dataset
        )


def echo_err(message: str) -> None:
    click.echo(message, err=True)


@contextlib.contextmanager
def prepared(opts: RunOptions, config: RunConfig | None = None) -> Iterator[PreparedRun]:
    """`setup.prepare` for these options (the simulator when no URL), notes on stderr."""
    with prepare(config or opts.config(), opts.sim(), opts.profile, echo_err) as prep:
        yield prep
