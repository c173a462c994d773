"""Every number a command takes is finite and within a sane range: ONE table, one walk.

`inf` and `nan` parse as floats, and TOML profiles can say `inf` and `nan` too; unchecked,
`--timeout inf` silently switches timeouts off and `--window inf` crashes the parent. Huge
counts build huge schedules, prompts or queues. So `check_limits` walks a command's
parameters (flags and the profile values behind them alike) before anything is started:
every float must be finite unless the table allows `inf` (a rate), and every number listed
here must lie in its range. Each problem is one `ConfigError` line naming the flag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llmtop.config import LengthDist
from llmtop.errors import ConfigError

DAY_S = 86_400.0
MAX_TOKENS = 1 << 20  # a prompt or an answer: a million tokens (the longest contexts)
MAX_IN_FLIGHT = 100_000  # requests in flight: one socket each, before any fd limit
MAX_RATE = 1_000_000.0  # req/s; past this a gap rounds to 0 ns and `inf` is meant
MAX_REQUESTS = 1_000_000_000
MAX_ALL_AT_ONCE = 1_000_000  # --request-rate inf: every request is scheduled up front
MIN_BURSTINESS = 1e-3  # a smaller gamma shape makes nearly every gap 0 ns: all at once

# name → (lowest, highest, inf allowed, lowest excluded)
LIMITS: dict[str, tuple[float, float, bool, bool]] = {
    "request_rate": (0.0, MAX_RATE, True, True),
    "start_rate": (0.0, MAX_RATE, False, True),
    "max_rate": (0.0, MAX_RATE, True, True),
    "burstiness": (0.0, 1e3, False, True),
    "duration": (0.0, 30 * DAY_S, False, True),
    "warmup": (0.0, DAY_S, False, False),
    "window": (0.0, 3600.0, False, True),
    "timeout": (0.0, DAY_S, False, True),
    "read_timeout": (0.0, DAY_S, False, True),
    "connect_timeout": (0.0, 3600.0, False, True),
    "health_timeout": (0.0, 7 * DAY_S, False, True),
    "stop_grace": (0.0, 3600.0, False, False),
    "factor": (1.0, 100.0, False, True),
    "min_step_s": (0.0, DAY_S, False, True),
    "max_step_s": (0.0, DAY_S, False, True),
    "exit_after": (0.0, 30 * DAY_S, False, True),
    "trace_speed": (0.0, 1e6, False, True),
    "concurrency": (1, MAX_IN_FLIGHT, False, False),
    "max_concurrency": (1, MAX_IN_FLIGHT, False, False),
    "start_concurrency": (1, MAX_IN_FLIGHT, False, False),
    "max_conc": (1, MAX_IN_FLIGHT, False, False),
    "num_requests": (1, MAX_REQUESTS, False, False),
    "input_len": (1, MAX_TOKENS, False, False),
    "output_len": (1, MAX_TOKENS, False, False),
    "shared_prefix_len": (0, MAX_TOKENS, False, False),
    "prefix_len": (0, MAX_TOKENS, False, False),
    "workers": (1, 1024, False, False),
    "sim_tp": (1, 64, False, False),
    "engine_port": (1, 65535, False, False),
    "engine_nice": (-20, 19, False, False),
}
# Parameters whose flag is not spelled after their name.
FLAGS = {
    "factor": "--step (the step factor)",
    "max_conc": "--max-concurrency",
    "exit_after": "--exit-after",
}


def flag_of(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def _check_number(name: str, value: float) -> None:
    flag = flag_of(name)
    shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
    low, high, inf_ok, open_low = LIMITS.get(name, (-math.inf, math.inf, False, False))
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{flag} must be a number, got nan")
    if math.isinf(value):
        if inf_ok and value > 0:
            return
        raise ConfigError(f"{flag} must be a finite number, got {value:g}")
    if value < low or (open_low and value <= low):
        raise ConfigError(f"{flag} must be {'>' if open_low else '>='} {low:g}, got {shown}")
    if value > high:
        raise ConfigError(f"{flag} {shown} is more than llmtop takes (at most {high:,g})")


def check_limits(params: Mapping[str, Any]) -> None:
    """Every number in a command's parameters, checked (see the module's docstring)."""
    for name, value in params.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, LengthDist):
            for part in (value.a, value.b):
                if not math.isfinite(part) or abs(part) > MAX_TOKENS:
                    raise ConfigError(
                        f"{flag_of(name)} {value.text()}: every figure must be finite and at "
                        f"most {MAX_TOKENS:,}"
                    )
            continue
        if isinstance(value, float) or (isinstance(value, int) and name in LIMITS):
            _check_number(name, value)
    shape = params.get("burstiness")
    if isinstance(shape, int | float) and 0 < shape < MIN_BURSTINESS:
        raise ConfigError(
            f"--burstiness {shape:g} is below {MIN_BURSTINESS:g}: with a smaller shape nearly "
            "every gap is 0 and the load comes all at once"
        )
    rate = params.get("request_rate")
    count = params.get("num_requests")
    closed = params.get("concurrency") is not None
    all_at_once = isinstance(rate, float) and math.isinf(rate) and not closed
    if all_at_once and isinstance(count, int) and count > MAX_ALL_AT_ONCE:
        raise ConfigError(
            f"--request-rate inf schedules every request at once: {count:,} is more than "
            f"{MAX_ALL_AT_ONCE:,}; give a finite --request-rate for a run this long"
        )
