"""Options shared by `run`, `knee`, `launch` and the live UI, validated into ONE typed object.

Every command takes the same target / workload / load flags and turns them into a
`RunOptions` through `RunOptions.from_params` (the one place flags are checked against each
other), then into a `RunConfig` and a prepared target (`llmtop.setup.prepare`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click

from llmtop.cli import workloads as wl
from llmtop.cli.limits import check_limits
from llmtop.cli.observe import gpu_metrics_option
from llmtop.cli.scale import check_ray_address, scale_options
from llmtop.config import LengthDist, LoadPlan, RunConfig, Target, Timeouts, TraceRow, Workload
from llmtop.errors import ConfigError
from llmtop.profiles import LENGTH_ALLOWED_CLI, Profile, load_profile, parse_length
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
            self.fail(f"{value!r}: expected {LENGTH_ALLOWED_CLI}", param, ctx)


PROFILE_META = "llmtop.profile"


def _load_profile_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Eager: load the profile first and make its values the defaults of the other flags.

    Click reads `ctx.default_map` for every parameter not given on the command line, so
    flags win over the profile and `ctx.get_parameter_source` tells the two apart.
    """
    if value is None:
        return None
    profile = load_profile(value)
    defaults = profile.defaults()
    for p in ctx.command.params:  # a repeatable flag (knee's --slo tiers) takes a list
        if getattr(p, "multiple", False) and isinstance(defaults.get(p.name or ""), str):
            defaults[p.name or ""] = (defaults[p.name or ""],)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
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
            help="Simulated model when no --url (`llmtop sim --help` lists the presets).",
        ),
        click.option(
            "--sim-tp",
            type=int,
            default=1,
            show_default=True,
            help="Simulated tensor-parallel GPUs when no --url (1, 2, 4 or 8).",
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
        gpu_metrics_option,
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
        *wl.WORKLOAD_FLAGS,
    ]
)


def make_load_options(
    default_rate: str = "inf",
    duration_help: str = "Seconds of measured load (after --warmup).",
    requests_help: str = "Measured requests to send. Default: 100 when no --duration.",
) -> Callable[[F], F]:
    """The load flags; the UI gives its own defaults (a finite start rate, no end)."""
    rate_help = (
        "Open-loop req/s, or inf (all at once)."
        if default_rate == "inf"
        else "Open-loop req/s to start at (the arrows change it)."
    )
    return _apply(
        [
            click.option(
                "--request-rate",
                type=RateType(),
                default=default_rate,
                show_default=True,
                help=rate_help,
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
            click.option("--duration", type=float, help=duration_help),
            click.option("--num-requests", type=int, help=requests_help),
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
            scale_options,
        ]
    )


load_options = make_load_options()


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


_SOURCE = click.core.ParameterSource
_LOADED = ("trace_rows", "conversations")  # read from files by from_params, not flags
# Pairs that cannot both be set. When one came from the command line and the other only from
# the profile, the command line wins and the profile's value is dropped; when both were typed
# (or both are in the profile) it is an error.
_EXCLUSIVE = (
    ("duration", "num_requests"),
    ("concurrency", "max_concurrency"),
    ("concurrency", "request_rate"),
)


class _Given:
    """Where each option's value came from, and how to name it in a message.

    With a click context the parameter source tells typed flags, profile values and
    defaults apart; without one (a caller that builds the params itself) a value is "set"
    when it differs from RunOptions' default.
    """

    def __init__(self, o: dict[str, Any], ctx: click.Context | None) -> None:
        self.o = o
        self.ctx = ctx
        self.defaults = {
            f.name: f.default for f in dataclasses.fields(RunOptions) if f.init and f.repr
        }
        profile = o.get("profile")
        self.profile_name = profile.name if isinstance(profile, Profile) else None
        self.dropped: set[str] = set()  # profile values a typed flag overrode

    def _source(self, name: str) -> click.core.ParameterSource | None:
        if self.ctx is None or name not in self.ctx.params:
            return None
        return self.ctx.get_parameter_source(name)

    def set(self, name: str) -> bool:
        """Typed, from the environment, or from the profile (not a plain default)."""
        if name in self.dropped:
            return False
        value = self.o.get(name)
        src = self._source(name)
        if src is None:
            return value is not None and value != self.defaults.get(name)
        return src != _SOURCE.DEFAULT and value is not None

    def typed(self, name: str) -> bool:
        src = self._source(name)
        if src is None:
            return self.set(name)
        return src in (_SOURCE.COMMANDLINE, _SOURCE.ENVIRONMENT, _SOURCE.PROMPT)

    def from_profile(self, name: str) -> bool:
        return self._source(name) == _SOURCE.DEFAULT_MAP

    def flag(self, name: str) -> str:
        """`--input-len`, or `input_len of profile NAME` when the profile set it."""
        if self.from_profile(name) and self.profile_name:
            return f"{name} of profile {self.profile_name}"
        return "--" + name.replace("_", "-")


def _settle_profile(o: dict[str, Any], given: _Given) -> None:
    """Settle profile values against the flags given (the flags win): a typed flag drops the
    profile's value that excludes it (`--num-requests` its `duration`, `--request-rate` its
    closed-loop `concurrency`, ...)."""
    if o.get("profile") is None or given.ctx is None:
        return
    for a, b in _EXCLUSIVE:
        for mine, theirs in ((a, b), (b, a)):
            if given.typed(mine) and given.from_profile(theirs):
                o[theirs] = given.defaults.get(theirs)
                given.dropped.add(theirs)


def _sim_error(message: str, profile: Profile | None) -> str:
    """The simulator's own wording, with the flags of `run` / `knee` / the UI in it."""
    args = (profile.engine or {}).get("args") if profile else None
    has_gmu = isinstance(args, dict) and any("memory" in k for k in args)
    message = message.replace(
        " or --gpu-memory-utilization",
        " or the profile's gpu_memory_utilization" if has_gmu else "",
    )
    message = re.sub(r"unknown (gpu|model|engine) ", r"unknown --sim-\1 ", message)
    message = re.sub(r"--(tp|gpu|model|engine)\b(?!-)", r"--sim-\1", message)
    return "simulator: " + message


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The target, workload and load flags of one run, validated (see `from_params`).

    `notes` are the flags that were given but have no effect here ("--input-len ignored:
    prompts come from --dataset"): said once on stderr and kept in the JSON.
    """

    # target
    url: str = ""
    api: str = "completions"
    model: str = ""
    api_key: str | None = dataclasses.field(default=None, repr=False)
    headers: tuple[str, ...] = ()
    sim_engine: str = "vllm"
    sim_gpu: str = "a100-80g"
    sim_model: str = "llama-3-8b"
    sim_tp: int = 1
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
    workers: int = 1  # --workers (scale_options)
    ray: str | None = None  # --ray ADDRESS
    profile: Profile | None = None
    notes: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    prompts: tuple[tuple[str, int], ...] = dataclasses.field(default=(), repr=False)
    gpu_metrics: str | None = None  # issue 15: "local" (NVML) or a dcgm-exporter URL
    # production-like workloads (llmtop.cli.workloads)
    turns: int = 1
    think_time: str = "0"
    prefix_groups: int = 0
    prefix_len: int = 0
    prompt_format: str = wl.DEFAULT_PROMPT_FORMAT
    trace: str | None = None
    trace_speed: float = 1.0
    reset_prefix_cache: bool = False
    trace_rows: tuple[TraceRow, ...] = dataclasses.field(default=(), repr=False)
    conversations: tuple[Any, ...] = dataclasses.field(default=(), repr=False)

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        ctx: click.Context | None = None,
        default_requests: int | None = 100,
        *,
        launched: bool = False,
    ) -> RunOptions:
        """Validate click's parameters (extra keys are ignored): the ONE place flags are
        checked against each other, for every command. A conflict is a one-line
        ConfigError naming the flags; a flag made meaningless by another becomes a note.
        `launched`: the engine is started by `llmtop launch`, so no simulator is checked.
        """
        check_limits(params)  # every number finite and in range (llmtop.cli.limits)
        names = {f.name for f in dataclasses.fields(cls)} - {"notes", "prompts", *_LOADED}
        o = {k: v for k, v in params.items() if k in names}
        o["url"] = o.get("url") or ""
        o["headers"] = tuple(o.get("headers") or ())
        o["shared_prefix_len"] = o.get("shared_prefix_len") or 0
        given = _Given(o, ctx or click.get_current_context(silent=True))
        _settle_profile(o, given)
        opts = cls(**o)
        opts._check_values()
        _check_pairs(opts, given)
        prompts = ()
        if opts.dataset:
            from llmtop.datasets import load_dataset

            prompts = load_dataset(opts.dataset, opts.dataset_format or "auto")
        notes = _ignored(opts, given, prompts)
        notes += wl.check_workloads(opts, given)
        if not launched and not opts.url:
            opts._check_sim()
        if opts.duration is None and opts.num_requests is None:
            o["num_requests"] = default_requests
        files = wl.load_workload_files(opts, o)
        return dataclasses.replace(cls(**o), notes=tuple(notes), prompts=prompts, **files)

    def _check_values(self) -> None:
        """Each value on its own."""
        if self.workers < 1:
            raise ConfigError(f"--workers must be >= 1 (or auto), got {self.workers}")
        if self.ray:
            check_ray_address(self.ray)
        if self.shared_prefix_len < 0:
            raise ConfigError(f"--shared-prefix-len must be >= 0, got {self.shared_prefix_len}")
        for name in ("duration", "timeout", "read_timeout", "connect_timeout", "window"):
            _positive(name.replace("_", "-"), getattr(self, name))
        _positive("burstiness", self.burstiness)
        for name in ("num_requests", "max_concurrency", "concurrency", "sim_tp"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("input_len", "output_len"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup:g}")
        parse_headers(self.headers)

    def _check_sim(self) -> None:
        """The simulated engine this run would start: a bad choice is a one-line error now,
        in this command's flag names, not the simulator's stderr after it fails to start."""
        from llmtop.setup import sim_args_for
        from llmtop.sim.model import SimConfigError, build_settings

        kw: dict[str, Any] = {}
        args = sim_args_for(self.profile.engine if self.profile else None)
        for i, flag in enumerate(args):
            value = args[i + 1] if i + 1 < len(args) else ""
            if flag.startswith("--no-"):
                kw[flag[5:].replace("-", "_")] = False
            elif flag.startswith("--"):
                key = flag[2:].replace("-", "_")
                if not value or value.startswith("--"):
                    kw[key] = True
                else:
                    kw[key] = float(value) if "." in value else int(value)
        try:
            build_settings(self.sim_engine, self.sim_gpu, self.sim_model, self.sim_tp, **kw)
        except SimConfigError as exc:
            raise ConfigError(_sim_error(str(exc), self.profile)) from None
        except (TypeError, ValueError):
            return  # an engine arg the simulator reads differently: let it say so itself

    def sim(self) -> SimChoice:
        return SimChoice(self.sim_engine, self.sim_gpu, self.sim_model, tp=self.sim_tp)

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
            workers=self.workers,
            ray=self.ray,
        )
        dataset = self.prompts
        if self.dataset and not dataset:
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
            shared_prefix_len=0 if dataset else self.shared_prefix_len,
            dataset=str(self.dataset or ""),
            **wl.workload_fields(self),
        )
        timeouts = Timeouts(self.connect_timeout, self.timeout, self.read_timeout)
        target = Target(
            self.url, self.api, self.model, self.api_key or None, parse_headers(self.headers)
        )
        return RunConfig(
            target,
            workload,
            plan,
            timeouts=timeouts,
            window_s=self.window,
            dataset=() if self.conversations else dataset,
            conversations=self.conversations,
            trace=self.trace_rows,
        )


def _shortest(length: int | LengthDist) -> int:
    """The shortest prompt a length setting can give (a normal draw is clamped at 1)."""
    if isinstance(length, LengthDist):
        return max(1, round(length.a)) if length.kind == "uniform" else 1
    return int(length)


def _check_pairs(o: RunOptions, given: _Given) -> None:
    """Flags that contradict each other: one line naming both, whichever command it is."""
    f = given.flag
    if o.duration is not None and o.num_requests is not None:
        raise ConfigError(f"give {f('duration')} or {f('num_requests')}, not both")
    if o.concurrency is not None and o.max_concurrency is not None:
        raise ConfigError(
            f"{f('concurrency')} (closed loop) and {f('max_concurrency')} (a cap on an open "
            "loop) do not go together: give one"
        )
    if o.concurrency is not None and given.set("request_rate"):
        raise ConfigError(
            f"{f('concurrency')} (closed loop) and {f('request_rate')} (open loop) do not go "
            "together: give one"
        )
    closed = o.concurrency is not None
    if math.isinf(o.request_rate) and not closed and o.duration is not None:
        raise ConfigError(
            f"--request-rate inf sends everything at once: give {f('num_requests')} "
            f"instead of {f('duration')}"
        )
    if o.shared_prefix_len and not o.dataset and o.api != "chat":
        shortest = _shortest(o.input_len)
        if isinstance(o.input_len, LengthDist) and o.input_len.kind == "normal":
            shortest = o.input_len.mean
        if o.shared_prefix_len >= shortest:
            raise ConfigError(
                f"{f('shared_prefix_len')} {o.shared_prefix_len} leaves no room in "
                f"{f('input_len')} {_length_text(o.input_len)}: the shared prefix must be "
                "shorter than the prompt, or every request is the same prompt"
            )


def _length_text(v: int | LengthDist) -> str:
    return v.text() if isinstance(v, LengthDist) else str(v)


def _ignored(o: RunOptions, given: _Given, prompts: tuple[tuple[str, int], ...]) -> list[str]:
    """Flags given that another flag makes meaningless: one note each."""
    f = given.flag
    notes: list[str] = []
    if o.dataset:
        src = f("dataset")
        if given.set("input_len"):
            notes.append(f"{f('input_len')} ignored: prompts come from {src}")
        if o.shared_prefix_len and given.set("shared_prefix_len"):
            notes.append(f"{f('shared_prefix_len')} ignored: prompts come from {src}")
        if prompts and all(n for _, n in prompts) and given.set("output_len"):
            notes.append(
                f"{f('output_len')} ignored: every prompt in {src} gives its own output_len"
            )
    else:
        if given.set("dataset_format") and o.dataset_format != "auto":
            notes.append(f"{f('dataset_format')} ignored: no --dataset")
        if o.shared_prefix_len and o.api == "chat":
            notes.append(
                f"{f('shared_prefix_len')} ignored: --api chat sends text prompts (a shared "
                "prefix is built from token ids)"
            )
    if given.set("burstiness") and o.burstiness != 1.0:
        if o.concurrency is not None:
            notes.append(f"{f('burstiness')} ignored: a closed loop has no arrival process")
        elif math.isinf(o.request_rate):
            notes.append(f"{f('burstiness')} ignored: --request-rate inf sends all at once")
    if o.url:
        for name in ("sim_engine", "sim_gpu", "sim_model", "sim_tp"):
            if given.typed(name):
                notes.append(f"{f(name)} ignored: the simulator runs only without --url")
    return notes


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def echo_notes(opts: RunOptions) -> None:
    """The options' notes, once, on stderr."""
    for note in opts.notes:
        echo_err(f"llmtop: note: {note}")


@contextlib.contextmanager
def prepared(opts: RunOptions, config: RunConfig | None = None) -> Iterator[PreparedRun]:
    """`setup.prepare` for these options (the simulator when no URL), notes on stderr and
    in the JSON."""
    echo_notes(opts)
    with prepare(config or opts.config(), opts.sim(), opts.profile, echo_err) as prep:
        if opts.notes:
            prep.extra["notes"] = [*opts.notes, *prep.extra.get("notes", [])]
        yield dataclasses.replace(prep, gpu_metrics=opts.gpu_metrics)  # --gpu-metrics
