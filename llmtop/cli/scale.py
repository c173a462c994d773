"""`--workers` and `--ray`: how many load processes, and where (issue 13, docs/scale.md)."""

from __future__ import annotations

from typing import Any

import click

from llmtop.errors import ConfigError


class WorkersType(click.ParamType):
    """`--workers N` (N >= 1) or `auto` (this machine's free cores minus one)."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            from llmtop.load.workers import auto_workers

            return auto_workers()
        try:
            return int(text)
        except ValueError:
            self.fail(f"{value!r}: give a number of workers (e.g. 4) or 'auto'", param, ctx)


def scale_options(f: Any) -> Any:
    """The `--workers` and `--ray` flags (in the shared load flags, and on `knee`)."""
    for opt in reversed(_OPTIONS):
        f = opt(f)
    return f


_OPTIONS = [
    click.option(
        "--workers",
        type=WorkersType(),
        default="1",
        show_default=True,
        help="Load processes to split the load over (auto: free cores minus one); with "
        "--ray, Ray actors spread over the cluster's nodes.",
    ),
    click.option(
        "--ray",
        "ray",
        metavar="ADDRESS",
        help="Run the workers as Ray actors on a cluster: auto, host:port or ray://host:port "
        "(pip install 'llmtop[ray]').",
    ),
]


def check_ray_address(address: str) -> None:
    """`--ray` must name a cluster the way `ray.init(address=...)` takes it."""
    text = address.strip()
    if text.startswith("ray://"):
        _check_ray_client(address)
        return
    if text == "auto":
        return
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray {address!r}: expected auto, host:port or ray://host:port")


def _check_ray_client(address: str) -> None:
    """`ray://` is Ray's client mode, which needs `ray[client]` (grpcio): without it, Ray
    fails only after connecting, with a message about pip extras; say it before any load."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return  # the run says that --ray needs Ray
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--ray {address}: Ray client mode (ray://) needs pip install 'ray[client]' "
            "(or give the cluster's host:port from a node of the cluster)"
        ) from None
