"""Flags, profile values and datasets: `inf`, `nan` and huge values are one-line errors.

Property-based (hypothesis) over the ONE table of limits (llmtop.cli.limits) and over
random TOML profiles, plus the real CLI for the cases the issue names.
"""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtop import datasets
from llmtop.cli.limits import LIMITS, MAX_ALL_AT_ONCE, check_limits
from llmtop.cli.options import RunOptions
from llmtop.config import LoadPlan, RunConfig, Target
from llmtop.errors import ConfigError
from llmtop.profiles import load_profile
from llmtop.session import FD_RESERVE, ensure_fd_limit
from tests.conftest import assert_one_line_error, run_cli

_NUMBERS = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1e308, 0.0, -1.0, 1e-12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**12),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(LIMITS)), _NUMBERS, max_size=6))
def test_property_every_number_is_finite_and_in_range_or_refused(params: dict[str, Any]) -> None:
    try:
        check_limits(params)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("--")
        return
    for name, value in params.items():
        low, high, inf_ok, open_low = LIMITS[name]
        assert not math.isnan(value)
        if math.isinf(value):
            assert inf_ok and value > 0
            continue
        assert (value > low if open_low else value >= low) and value <= high


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("timeout", math.inf),
        ("read_timeout", math.inf),
        ("connect_timeout", math.nan),
        ("window", math.inf),
        ("duration", math.inf),
        ("warmup", math.nan),
        ("burstiness", math.inf),
        ("request_rate", math.nan),
        ("request_rate", 1e300),
        ("concurrency", 10**9),
        ("num_requests", 10**12),
    ],
)
def test_run_options_refuse_non_finite_and_huge_values(flag: str, value: float) -> None:
    with pytest.raises(ConfigError, match="--" + flag.replace("_", "-")):
        RunOptions.from_params({"url": "http://127.0.0.1:9", flag: value})


def test_inf_rate_cannot_schedule_an_unbounded_burst() -> None:
    with pytest.raises(ConfigError, match="at once"):
        check_limits({"request_rate": math.inf, "num_requests": MAX_ALL_AT_ONCE + 1})
    check_limits({"request_rate": math.inf, "num_requests": 1000})
    check_limits({"request_rate": math.inf, "concurrency": 8, "num_requests": 10**8})


@pytest.mark.parametrize(
    "args",
    [
        ("--timeout", "inf"),
        ("--window", "inf"),
        ("--duration", "nan"),
        ("--input-len", "uniform:1:inf"),
        ("--request-rate", "inf", "--num-requests", "5000000"),
    ],
)
def test_cli_one_line_errors_before_anything_starts(args: tuple[str, ...]) -> None:
    r = run_cli("run", "--url", "http://127.0.0.1:9", *args, timeout=60)
    assert_one_line_error(r, args[0])
    assert r.returncode == 2
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1


_TOML_VALUES = st.sampled_from(
    ["inf", "-inf", "nan", "+inf", "1e308", "-1", "0", "0.5", "3", "1e9", '"inf"', '"x"', "true"]
)
_KEYS = {
    "load": ["request_rate", "burstiness", "concurrency", "max_concurrency", "duration",
             "num_requests", "warmup", "window"],
    "workload": ["input_len", "output_len", "shared_prefix_len", "seed"],
    "search": ["start_rate", "max_rate", "step", "resolution", "start_concurrency"],
}  # fmt: skip


_PAIRS = [(section, key) for section, keys in _KEYS.items() for key in keys]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.dictionaries(st.sampled_from(_PAIRS), _TOML_VALUES, min_size=1, max_size=5))
def test_property_profile_values_are_checked(
    values: dict[tuple[str, str], str], tmp_path: Path
) -> None:
    body: dict[str, dict[str, str]] = {}
    for (section, key), value in values.items():
        body.setdefault(section, {})[key] = value
    text = "\n".join(
        f"[{s}]\n" + "\n".join(f"{k} = {v}" for k, v in kv.items()) for s, kv in body.items()
    )
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        profile = load_profile(path)
        check_limits(profile.defaults())
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for name, value in profile.defaults().items():
        if isinstance(value, float):
            assert not math.isnan(value)
            assert not math.isinf(value) or name in ("request_rate", "max_rate")


def test_the_open_file_limit_is_raised_or_the_run_refused() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        config = RunConfig(Target("http://x"), plan=LoadPlan(concurrency=200))
        ensure_fd_limit(config)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard  # raised to the hard one
        too_many = RunConfig(Target("http://x"), plan=LoadPlan(concurrency=hard))
        with pytest.raises(ConfigError, match=r"ulimit -n"):
            ensure_fd_limit(too_many)
        assert hard >= 200 + FD_RESERVE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_datasets_deep_json_and_oversized_files_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps({"prompt": "hi"}) + "\n" + "[" * 200_000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.jsonl:2: not JSON \(nested too deeply\)"):
        datasets.load_dataset(deep)
    share = tmp_path / "deep.json"
    share.write_text("[" * 200_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        datasets.load_dataset(share)
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"prompt": "x" * 5000}) + "\n")
    monkeypatch.setattr(datasets, "MAX_DATASET_BYTES", 1000)
    with pytest.raises(ConfigError, match="take a part of it"):
        datasets.load_dataset(big)
