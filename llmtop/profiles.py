"""Workload profiles: a TOML file naming a workload, a load plan, an SLO and the engine setup.

A profile only supplies defaults: `--profile` loads it before the other flags are read and
every flag given on the command line wins (see `cli_options.profile_option`). The schema is
checked strictly so that a typo does not silently run a different experiment: each problem
is one `ConfigError` line naming the file, the key and what is allowed.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtop.config import LengthDist
from llmtop.errors import ConfigError


def _shipped_dir() -> Path:
    """`profiles/` at the top of a checkout; `llmtop/shipped_profiles/` inside a wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "shipped_profiles", here.parent / "profiles"):
        if candidate.is_dir():
            return candidate
    return here / "shipped_profiles"


SHIPPED_DIR = _shipped_dir()

Check = tuple[Callable[[Any], Any], str]  # converter (raises ValueError) and what is allowed


def _int(minimum: int) -> Check:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError
        return v

    return conv, f"a whole number >= {minimum}"


def _float(minimum: float, strict: bool) -> Check:
    def conv(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError
        if (v <= minimum if strict else v < minimum) or not math.isfinite(v):
            raise ValueError  # TOML's inf and nan included: only a rate may be infinite
        return float(v)

    return conv, f"a number {'>' if strict else '>='} {minimum:g}"


def _rate(v: Any) -> float:
    if isinstance(v, str) and v.strip().lower() in ("inf", "infinity", "max"):
        return math.inf
    if isinstance(v, float) and v == math.inf:  # TOML's bare inf
        return math.inf
    return _float(0, True)[0](v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return v


def _choice(*names: str) -> Check:
    def conv(v: Any) -> str:
        if v not in names:
            raise ValueError
        return str(v)

    return conv, "one of " + ", ".join(repr(n) for n in names)


def parse_length(value: Any) -> int | LengthDist:
    """`2048`, `"uniform:1024:3072"`, `"normal:1024:200"`, or a TOML table of the same."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError
        return value
    if isinstance(value, dict):
        kind = value.get("dist")
        keys = {"uniform": ("min", "max"), "normal": ("mean", "stddev")}.get(str(kind))
        if keys is None or set(value) != {"dist", *keys}:
            raise ValueError
        a, b = (value[k] for k in keys)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_length(int(text))
        kind, _, rest = text.partition(":")
        a_text, _, b_text = rest.partition(":")
        try:
            a, b = float(a_text), float(b_text)
        except ValueError:
            raise ValueError from None
    else:
        raise ValueError
    if (
        isinstance(a, bool)
        or isinstance(b, bool)
        or not all(isinstance(x, int | float) for x in (a, b))
    ):
        raise ValueError
    if kind == "uniform" and 1 <= a <= b:
        return LengthDist("uniform", float(a), float(b))
    if kind == "normal" and a >= 1 and b >= 0:
        return LengthDist("normal", float(a), float(b))
    raise ValueError


LENGTH_ALLOWED = (
    "a whole number >= 1, 'uniform:MIN:MAX', 'normal:MEAN:STDDEV' "
    "or a table {dist = 'uniform', min, max} / {dist = 'normal', mean, stddev}"
)
# The same on the command line, where a TOML table cannot be given.
LENGTH_ALLOWED_CLI = "a whole number >= 1, uniform:MIN:MAX or normal:MEAN:STDDEV"
_LENGTH: Check = (parse_length, LENGTH_ALLOWED)

# section → key → (converter, allowed); the key is also the click parameter it sets.
SCHEMA: dict[str, dict[str, Check]] = {
    "profile": {
        "name": (_str, "a name"),
        "description": (_str, "text"),
        "source": (_str, "text"),
    },
    "workload": {
        "input_len": _LENGTH,
        "output_len": _LENGTH,
        "ignore_eos": (_bool, "true or false"),
        "seed": _int(0),
        "dataset": (_str, "a path (relative to the profile)"),
        "dataset_format": _choice("auto", "jsonl", "sharegpt"),
        "shared_prefix_len": _int(0),
        "api": _choice("completions", "chat"),
    },
    "load": {
        "request_rate": (_rate, "a rate in req/s > 0, or 'inf'"),
        "burstiness": _float(0, True),
        "concurrency": _int(1),
        "max_concurrency": _int(1),
        "duration": _float(0, True),
        "num_requests": _int(1),
        "warmup": _float(0, False),
        "window": _float(0, True),
    },
    "slo": {},  # metric_stat = "limit" pairs, checked by the SLO parser
    "search": {
        "over": _choice("request_rate", "concurrency"),
        "start_rate": (_rate, "a rate in req/s > 0"),
        "max_rate": (_rate, "a rate in req/s > 0, or 'inf'"),
        "start_concurrency": _int(1),
        "max_search_concurrency": _int(1),
        "step": _float(1, True),
        "resolution": _float(0, True),
    },
    "engine": {
        "name": (_str, "an engine name, e.g. 'vllm' or 'trtllm'"),
        "model": (_str, "a model name or path"),
        "args": (lambda v: _engine_args(v), "a table of flag = value, or a list of strings"),
        "sweep": (lambda v: _sweep(v), "a table of flag = [values...]"),
    },
    "sim": {
        "engine": _choice("vllm", "trtllm"),
        "gpu": (_str, "a GPU preset name"),
        "model": (_str, "a model preset name"),
        "tp": _int(1),
    },
}


def _engine_args(v: Any) -> dict[str, Any] | list[str]:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    if isinstance(v, dict) and all(isinstance(x, str | int | float | bool) for x in v.values()):
        return dict(v)
    raise ValueError


def _sweep(v: Any) -> dict[str, list[Any]]:
    if not isinstance(v, dict) or not v:
        raise ValueError
    for values in v.values():
        if not isinstance(values, list) or not values:
            raise ValueError
    return {k: list(vals) for k, vals in v.items()}


@dataclass(frozen=True)
class Profile:
    """A checked profile: `options` maps click parameter names to default values."""

    path: Path
    name: str
    description: str
    options: dict[str, Any]
    slo: str | None = None
    engine: dict[str, Any] | None = None
    search: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Every click default this profile supplies (workload, load, SLO, search, simulator)."""
        out = dict(self.options)
        if self.slo:
            out["slo"] = self.slo
        out.update(self._search_defaults())
        for key, value in self.sim.items():
            out[f"sim_{key}"] = value
        if (
            "sim_engine" not in out
            and self.engine
            and self.engine.get("name") in ("vllm", "trtllm")
        ):
            out["sim_engine"] = self.engine["name"]
        return out

    def _search_defaults(self) -> dict[str, Any]:
        """`[search]` under the parameter names of `llmtop knee` (and plain names beside)."""
        out: dict[str, Any] = {}
        for key, value in self.search.items():
            if key == "over":
                out["search_over"] = value
                out["concurrency_search"] = value == "concurrency"
            elif key == "step":
                out["step"] = out["factor"] = value
            elif key == "max_search_concurrency":
                out["max_search_concurrency"] = out["max_conc"] = value
            else:
                out[key] = value
        return out

    def describe(self) -> dict[str, str]:
        """Workload, load and SLO in a few words each (what `llmtop profiles` lists)."""
        o = self.options

        def length(key: str) -> str:
            v = o.get(key)
            return v.text() if isinstance(v, LengthDist) else str(v) if v else "default"

        if o.get("dataset"):
            workload = f"dataset {Path(str(o['dataset'])).name}"
        else:
            workload = f"{length('input_len')} in / {length('output_len')} out"
        if o.get("concurrency"):
            load = f"closed loop, {o['concurrency']} concurrent"
        elif "request_rate" in o:
            rate = o["request_rate"]
            load = "all at once" if math.isinf(rate) else f"{rate:g} req/s"
        else:
            load = "default rate"
        if o.get("num_requests"):
            load += f", {o['num_requests']} requests"
        elif o.get("duration"):
            load += f", {o['duration']:g} s"
        over = self.search.get("over")
        if over:
            load += f"; knee over {'concurrency' if over == 'concurrency' else 'request rate'}"
        sweep = (self.engine or {}).get("sweep")
        if sweep:
            load += "; sweeps " + ", ".join(sweep)
        return {
            "name": self.name,
            "workload": workload,
            "load": load,
            "slo": self.slo or "-",
            "description": self.description,
        }

    def public(self) -> dict[str, Any]:
        """What a snapshot records about the profile it ran."""
        opts = {k: (v.text() if isinstance(v, LengthDist) else v) for k, v in self.options.items()}
        opts = {
            k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in opts.items()
        }
        return {
            "name": self.name,
            "path": str(self.path),
            "description": self.description,
            "options": opts,
            "slo": self.slo,
            "search": self.search,
            "engine": self.engine,
        }


def _looks_like_path(name: str | Path) -> bool:
    """`./x.toml`, `dir/x`, `x.toml`: a file the user named, not a shipped profile's name."""
    text = str(name)
    return isinstance(name, Path) or "/" in text or text.endswith(".toml")


def resolve_profile_path(name: str | Path) -> Path:
    """A path as given, else a shipped profile by name (`llama3-8b-2048-128`)."""
    path = Path(name)
    if path.exists() or _looks_like_path(name):
        return path
    shipped = SHIPPED_DIR / f"{name}.toml"
    return shipped if shipped.exists() else path


def _slo_text(path: Path, value: Any) -> str:
    from llmtop.slo import Slo, SloError

    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        parts = []
        for key, limit in value.items():
            if isinstance(limit, bool) or not isinstance(limit, str | int | float):
                raise ConfigError(
                    f'{path}: [slo] {key}: expected a limit like "1s", "20ms" or "1%", '
                    f"got {limit!r}"
                )
            parts.append(f"{key}<={limit}")
        text = ",".join(parts)
    else:
        raise ConfigError(f'{path}: slo: expected "ttft_p99<=1s,..." or a [slo] table')
    try:
        Slo.parse(text)
    except SloError as exc:
        raise ConfigError(f"{path}: slo: {exc}") from None
    return text


def load_profile(name: str | Path) -> Profile:
    """Read and check a profile; one `ConfigError` line for any problem."""
    path = resolve_profile_path(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if _looks_like_path(name):
            raise ConfigError(f"{name}: no such file") from None
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_DIR.glob("*.toml")))
        raise ConfigError(
            f"no such profile {str(name)!r} (shipped: {shipped}; `llmtop profiles` lists them)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read profile: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    options: dict[str, Any] = {}
    checked: dict[str, dict[str, Any]] = {}
    slo: str | None = None
    for section, body in raw.items():
        if section == "slo":
            slo = _slo_text(path, body)
            continue
        if section not in SCHEMA:
            allowed = ", ".join(f"[{s}]" for s in SCHEMA)
            raise ConfigError(f"{path}: unknown section [{section}]; allowed: {allowed}")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section} must be a [{section}] table")
        checked[section] = {}
        for key, value in body.items():
            check = SCHEMA[section].get(key)
            if check is None:
                allowed = ", ".join(SCHEMA[section])
                raise ConfigError(f"{path}: unknown key [{section}] {key}; allowed: {allowed}")
            conv, what = check
            try:
                checked[section][key] = conv(value)
            except (ValueError, TypeError):
                raise ConfigError(
                    f"{path}: [{section}] {key}: expected {what}, got {value!r}"
                ) from None
    workload = dict(checked.get("workload", {}))
    if "dataset" in workload:
        ds = Path(workload["dataset"]).expanduser()
        workload["dataset"] = str(ds if ds.is_absolute() else path.parent / ds)
    options.update(workload)
    options.update(checked.get("load", {}))
    load = checked.get("load", {})
    if "duration" in load and "num_requests" in load:
        raise ConfigError(f"{path}: [load] give duration or num_requests, not both")
    if "concurrency" in load and "max_concurrency" in load:
        raise ConfigError(f"{path}: [load] concurrency (closed loop) and max_concurrency conflict")
    if "concurrency" in load and "request_rate" in load:
        raise ConfigError(
            f"{path}: [load] concurrency (closed loop) and request_rate (open loop) conflict: "
            "give one"
        )
    meta = checked.get("profile", {})
    return Profile(
        path=path,
        name=meta.get("name", path.stem),
        description=meta.get("description", ""),
        options=options,
        slo=slo,
        engine=checked.get("engine") or None,
        search=checked.get("search", {}),
        sim=checked.get("sim", {}),
    )


def shipped_profiles() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.toml"))
