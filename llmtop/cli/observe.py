"""Flags that look inside the server beside the load: GPU telemetry (issue 15).

Kept out of `options.py` (which holds every other shared flag) so that file stays small;
`target_options` includes this one, so every command that drives a load takes it.
"""

from __future__ import annotations

from typing import Any

import click


def _check_gpu_metrics(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """'local' or an http(s) URL, said at parse time (before any server is probed)."""
    if value is None or value == "local" or str(value).startswith(("http://", "https://")):
        return value
    raise click.BadParameter(
        f"takes 'local' or a dcgm-exporter URL (http://host:9400/metrics), not {value!r}"
    )


gpu_metrics_option = click.option(
    "--gpu-metrics",
    "gpu_metrics",
    metavar="URL|local",
    default=None,
    callback=_check_gpu_metrics,
    help=(
        "GPU telemetry beside the load: a dcgm-exporter URL (http://host:9400/metrics) or "
        "'local' (NVML on this host; pip install 'llmtop[gpu]'). llmtop launch: local "
        "when NVML works."
    ),
)
