"""`llmtop knee`: find the highest load that meets an SLO (registered by `llmtop.cli`)."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import click

from llmtop.cli.limits import check_limits
from llmtop.cli.options import (
    RateType,
    RunOptions,
    parse_slo,
    prepared,
    scale_options,
    target_options,
    workload_options,
)
from llmtop.errors import EXIT_SLO_BREACHED, ConfigError, LlmtopError
from llmtop.knee.search import KneePlan, Tier
from llmtop.output.writable import check_outputs
from llmtop.slo import Slo


def _percent(value: str) -> float:
    text = str(value).strip()
    try:
        v = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(
            f"--resolution {value!r}: give a fraction (0.05) or a percentage (5%)"
        ) from None
    if v >= 1 and not text.endswith("%"):
        v /= 100  # "5" means 5 %
    if not 0 < v < 1:
        raise ConfigError(f"--resolution {value!r} must be between 0 and 100 %")
    return v


class DurationType(click.ParamType):
    """A length of time: `90`, `90s`, `2m`, `1.5h` (seconds when no unit)."""

    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip().lower()
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:])
        number = text[:-1] if scale is not None else text
        try:
            seconds = float(number) * (scale or 1.0)
        except ValueError:
            self.fail(f"{value!r}: give a time, e.g. 90, 90s, 10m or 1h", param, ctx)
        if not 0 < seconds < 30 * 86400 or math.isnan(seconds):
            self.fail(f"{value!r} must be a positive, finite time", param, ctx)
        return seconds


_TIER = re.compile(r"^\s*([A-Za-z][\w-]*)\s*:\s*(.*)$")


def parse_tiers(values: tuple[str, ...]) -> tuple[Slo, tuple[Tier, ...]]:
    """`--slo` given once, or once per named tier (`--slo 'chat: ttft_p99<=500ms'`): the
    union of every limit (what the session measures) and each tier's share of it."""
    named: list[tuple[str | None, Slo]] = []
    for value in values:
        m = _TIER.match(value)
        name, text = (m.group(1), m.group(2)) if m else (None, value)
        slo = parse_slo(text)
        if not slo:
            where = f" for tier {name!r}" if name else ""
            raise ConfigError(
                f"--slo is empty{where}: give at least one limit, e.g. 'ttft_p99<=1s'"
            )
        named.append((name, slo))
    if len(named) > 1:
        names = [n for n, _ in named]
        if None in names:
            raise ConfigError(
                "several --slo are tiers: name each one, e.g. --slo 'chat: ttft_p99<=500ms'"
                " --slo 'batch: ttft_p99<=5s'"
            )
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"--slo tier {sorted(dup)[0]!r} is named twice")
    limits: list[Any] = []
    tiers = []
    for name, slo in named:
        idx = []
        for limit in slo.limits:
            if limit not in limits:
                limits.append(limit)
            idx.append(limits.index(limit))
        tiers.append(Tier(name, tuple(idx)))
    return Slo(tuple(limits)), tuple(tiers) if len(tiers) > 1 or tiers[0].name else ()


@click.command("knee")
@target_options
@workload_options
@scale_options
@click.option(
    "--slo",
    required=True,
    multiple=True,
    help="The SLO each step must meet, e.g. 'ttft_p99<=1s' or 'tpot_p99<=20ms,error_rate<=1%'."
    " Repeat it with names for tiers found in one search: --slo 'chat: ttft_p99<=500ms'"
    " --slo 'batch: ttft_p99<=5s'.",
)
@click.option(
    "--start-rate", type=RateType(), default="1", show_default=True, help="First rate (req/s)."
)
@click.option(
    "--max-rate", type=RateType(), default="1000", show_default=True, help="Rate cap (req/s)."
)
@click.option(
    "--step",
    "factor",
    type=float,
    default=2.0,
    show_default=True,
    help="Ramp factor between steps.",
)
@click.option("--resolution", default="5%", show_default=True, help="Stop bisecting at this gap.")
@click.option(
    "--min-step-s",
    type=float,
    default=6.0,
    show_default=True,
    help="Least measured time a step holds.",
)
@click.option(
    "--max-step",
    "max_step",
    type=DurationType(),
    default=None,
    help="Most measured time a step holds (default 180s; '2m', '90s').",
)
@click.option("--max-step-s", type=float, default=None, hidden=True)
@click.option(
    "--confirm-s",
    type=DurationType(),
    default=None,
    help="How long the knee is held before it is called sustained"
    " (default: max(60 s, 20 × E2E p50)).",
)
@click.option(
    "--budget",
    type=DurationType(),
    default=None,
    help="Bound the whole search ('10m'); when it ends first the answer is the bracket.",
)
@click.option(
    "--concurrency-search",
    is_flag=True,
    help="Closed loop: search the concurrency (requests kept in flight) instead of the rate.",
)
@click.option("--start-concurrency", type=int, default=1, show_default=True)
@click.option("--max-concurrency", "max_conc", type=int, default=256, show_default=True)
@click.option(
    "--verify",
    is_flag=True,
    hidden=True,
    help="Kept for old scripts: the knee is always held again (--confirm-s) before the answer.",
)
@click.option(
    "--confidence", type=float, default=0.95, show_default=True, help="Level of the step verdicts."
)
@click.option(
    "--burstiness", type=float, default=1.0, show_default=True, help="Gamma shape of arrivals."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write the knee and its steps as JSON ('-': to stdout, the table then goes to stderr).",
)
@click.option("--save", "save_path", type=click.Path(dir_okay=False), help="Write a snapshot here.")
def knee_command(**o: Any) -> None:
    """Ramp the load until the SLO breaks, then bisect to the knee (headless)."""
    from llmtop.knee.runner import run_knee

    check_limits(o)  # before the plan is built from them
    check_outputs({"--json": o["json_path"], "--save": o["save_path"]})

    slo, tiers = parse_tiers(tuple(o["slo"]))
    max_step = o["max_step"] or o["max_step_s"] or KneePlan.max_step_s
    resolution = _percent(o["resolution"])
    if not 0.5 < o["confidence"] < 1:
        raise ConfigError(f"--confidence must be between 0.5 and 1, got {o['confidence']:g}")
    conc = o["concurrency_search"]
    if conc:
        start, top = float(o["start_concurrency"]), float(o["max_conc"])
        if start < 1:
            raise ConfigError(f"--start-concurrency must be >= 1, got {o['start_concurrency']}")
    else:
        start, top = o["start_rate"], o["max_rate"]
        if math.isinf(start):
            raise ConfigError("--start-rate must be a finite rate")
    if top < start:
        flag = "--max-concurrency" if conc else "--max-rate"
        raise ConfigError(f"{flag} ({top:g}) is below the start ({start:g})")
    try:
        plan = KneePlan(
            mode="concurrency" if conc else "rate",
            start=start,
            factor=o["factor"],
            max_value=top,
            resolution=resolution,
            min_step_s=o["min_step_s"],
            max_step_s=max_step,
            alpha=1 - o["confidence"],
            verify=o["verify"],
            confirm_s=o["confirm_s"],
            budget_s=o["budget"],
            arrival_cv2=1.0 / o["burstiness"],
            tiers=tiers,
        )
    except ValueError as exc:
        raise ConfigError(f"knee search: {exc}") from None
    o["request_rate"] = start if not conc else math.inf
    o["concurrency"] = int(start) if conc else None
    o["max_concurrency"] = None
    o["duration"] = None
    o["num_requests"] = None
    opts = RunOptions.from_params(o, default_requests=None)
    with prepared(opts) as prep:
        human = sys.stderr if o["json_path"] == "-" else sys.stdout  # `--json -`: stdout is JSON
        run = run_knee(
            prep.config, prep.extra, slo, plan, o["json_path"], o["save_path"], out=human
        )
    if run.failure and not run.result.steps:
        raise LlmtopError(run.failure.splitlines()[0])
    if run.interrupted:
        where = f" and in {o['json_path']}" if o["json_path"] else ""
        click.echo(f"llmtop: interrupted; the steps so far are above{where}", err=True)
        sys.exit(130)
    if run.failure:
        raise LlmtopError(run.failure.splitlines()[0])
    if not run.result.met:
        # the SLO as a CI gate: no step met it (or one of its tiers); the outputs are written
        why = (
            "; ".join(
                f"{k.name}: {k.reason}" if k.name else k.reason
                for k in run.result.knees
                if k.knee is None
            )
            or run.result.reason
        )
        click.echo(f"llmtop: no load met the SLO: {why}", err=True)
        sys.exit(EXIT_SLO_BREACHED)
