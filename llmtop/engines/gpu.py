"""GPU telemetry beside the load: an NVIDIA DCGM exporter over HTTP, or NVML on this host.

`--gpu-metrics URL` scrapes dcgm-exporter's Prometheus page (the standard fields:
`DCGM_FI_DEV_GPU_UTIL` %, `DCGM_FI_PROF_SM_ACTIVE` 0..1, `DCGM_FI_DEV_FB_USED` MiB,
`DCGM_FI_DEV_POWER_USAGE` W, `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` mJ since boot);
`--gpu-metrics local` reads the same through NVML (nvidia-ml-py, the `llmtop[gpu]` extra:
utilisation, memory, power, and the energy counter on Volta and later; NVML has no SM
activity). Either way each read is one dict, which the metrics poller stores as the sample's
`"gpu"`:

    {"source": "dcgm" | "nvml", "gpus": [{"gpu", "name", "util_pct", "sm_active",
     "memory_used_mib", "power_w", "energy_j"}...], "total": {"gpus", "util_pct" (mean),
     "sm_active" (mean), "memory_used_mib" (sum), "power_w" (sum), "energy_j" (sum, None
     unless every GPU has the counter)}}

A value a source lacks is None. The run's summary (`metrics.serverside.gpu_summary`) turns
the series into mean utilisation and power, peak memory and energy per output token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llmtop.engines.http import SideRequestError, request
from llmtop.errors import ConfigError, describe_exception, redact

LOCAL = "local"
MAX_DCGM_BYTES = 4 << 20

_DCGM_FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL": "util_pct",
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active",
    "DCGM_FI_DEV_FB_USED": "memory_used_mib",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "energy_j",  # mJ on the wire
    # a counter without `_total`: prometheus_client's parser names its sample so
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total": "energy_j",
}
PER_GPU = ("util_pct", "sm_active", "memory_used_mib", "power_w", "energy_j")


class GpuError(Exception):
    """A GPU read that gave nothing usable (one line)."""


def totals(gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """The all-GPU figures of one read: mean utilisation and SM activity, summed memory,
    power and energy (energy only when every GPU has a counter)."""

    def values(field: str) -> list[float]:
        return [g[field] for g in gpus if _finite(g.get(field))]

    def mean(field: str) -> float | None:
        v = values(field)
        return sum(v) / len(v) if v else None

    def total(field: str, all_needed: bool = False) -> float | None:
        v = values(field)
        if not v or (all_needed and len(v) != len(gpus)):
            return None
        return sum(v)

    return {
        "gpus": len(gpus),
        "util_pct": mean("util_pct"),
        "sm_active": mean("sm_active"),
        "memory_used_mib": total("memory_used_mib"),
        "power_w": total("power_w"),
        "energy_j": total("energy_j", all_needed=True),
    }


def parse_dcgm(text: str) -> dict[str, Any]:
    """One read from dcgm-exporter's text; GpuError when no DCGM field is there."""
    from prometheus_client.parser import text_string_to_metric_families

    per: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                field = _DCGM_FIELDS.get(s.name)
                if field is None:
                    continue
                key = (s.labels.get("Hostname", ""), s.labels.get("gpu", s.labels.get("UUID", "")))
                g = per.setdefault(
                    key,
                    {"gpu": key[1], "name": s.labels.get("modelName"), "host": key[0]}
                    | dict.fromkeys(PER_GPU),
                )
                value = float(s.value)
                g[field] = value / 1000.0 if field == "energy_j" else value
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise GpuError(f"not Prometheus text ({exc})") from None
    if not per:
        raise GpuError("no DCGM_FI_* series (is this a dcgm-exporter?)")
    gpus = [per[k] for k in sorted(per, key=lambda k: (k[0], _index(k[1])))]
    return {"source": "dcgm", "gpus": gpus, "total": totals(gpus)}


class DcgmSource:
    """dcgm-exporter's page, read through the one bounded side-request helper."""

    kind = "dcgm"

    def __init__(
        self, url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 2.0
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s

    def read(self) -> dict[str, Any]:
        try:
            reply = request(
                self.url, self.headers, timeout_s=self.timeout_s, max_bytes=MAX_DCGM_BYTES
            )
        except SideRequestError as exc:
            raise GpuError(f"cannot reach {redact(self.url)}: {exc.why}") from None
        if reply.status != 200:
            raise GpuError(f"{redact(self.url)} answered HTTP {reply.status}")
        return parse_dcgm(reply.body.decode("utf-8", "replace"))

    def close(self) -> None:
        pass


class NvmlSource:
    """The GPUs of this host through NVML (nvidia-ml-py)."""

    kind = "nvml"

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError:
            raise ConfigError(
                "--gpu-metrics local needs nvidia-ml-py: pip install 'llmtop[gpu]'"
            ) from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            raise ConfigError(f"--gpu-metrics local: NVML is not usable here ({exc})") from None
        if count == 0:
            pynvml.nvmlShutdown()
            raise ConfigError("--gpu-metrics local: NVML sees no GPU on this host")
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._names = [_text(pynvml.nvmlDeviceGetName(h)) for h in self._handles]

    def read(self) -> dict[str, Any]:
        nv = self._nvml
        gpus = []
        for i, h in enumerate(self._handles):
            g: dict[str, Any] = {"gpu": str(i), "name": self._names[i], "host": ""}
            g |= dict.fromkeys(PER_GPU)
            g["util_pct"] = _try(lambda h=h: float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
            g["memory_used_mib"] = _try(lambda h=h: nv.nvmlDeviceGetMemoryInfo(h).used / (1 << 20))
            g["power_w"] = _try(lambda h=h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
            g["energy_j"] = _try(lambda h=h: nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0)
            gpus.append(g)
        return {"source": "nvml", "gpus": gpus, "total": totals(gpus)}

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # shutting down twice, or a driver gone: nothing left to do
            pass


GpuSource = DcgmSource | NvmlSource


def open_source(spec: str, headers: Mapping[str, str] | None = None) -> GpuSource:
    """`--gpu-metrics`'s value as a source: "local" (NVML) or an http(s) URL (DCGM)."""
    if spec == LOCAL:
        return NvmlSource()
    if not spec.startswith(("http://", "https://")):
        raise ConfigError(
            f"--gpu-metrics takes 'local' or a dcgm-exporter URL "
            f"(http://host:9400/metrics), not {spec!r}"
        )
    return DcgmSource(spec, headers)


def nvml_works() -> bool:
    """True when NVML answers with at least one GPU (`llmtop launch` turns local on)."""
    try:
        NvmlSource().close()
    except ConfigError:
        return False
    except Exception:  # a broken driver install: no telemetry, but never a crash
        return False
    return True


def launch_default(given: str | None) -> str | None:
    """`llmtop launch` starts the engine on this host: NVML unless told otherwise."""
    if given:
        return given
    return LOCAL if nvml_works() else None


def check_source(source: GpuSource) -> str | None:
    """One read now: None when it worked, else the one-line reason (said before the run)."""
    try:
        source.read()
    except GpuError as exc:
        return f"GPU metrics unavailable: {exc}"
    except Exception as exc:  # a driver error: the run goes on without GPU telemetry
        return f"GPU metrics unavailable: {describe_exception(exc)}"
    return None


def _try(read: Any) -> float | None:
    try:
        v = float(read())
    except Exception:  # NVMLError_NotSupported and friends: this GPU lacks the field
        return None
    return v if math.isfinite(v) else None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _index(label: str) -> tuple[int, str]:
    return (int(label), "") if label.isdigit() else (1 << 30, label)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
