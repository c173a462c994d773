"""How `--ray` connects: a Ray client server that fails to set up our session is tried again,
and what finally fails is one line that names the reason.

Ray's own `init` is replaced by a recorder here (our retry logic is what is under test; the
real `ray://` path runs against a real two-node cluster in test_ray_client.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from llmtop.config import LoadPlan, RunConfig, Target, Workload
from llmtop.errors import ConfigError
from llmtop.load import ray_workers
from llmtop.load.ray_workers import RayWorkerGroup, _one_line

TRACEBACK = (
    "Initialization failure from server:\nTraceback (most recent call last):\n"
    '  File "proxier.py", line 770, in Datapath\n'
    "RuntimeError: Starting Ray client server failed. See ray_client_server_23001.err\n"
)


class FlakyRay:
    """`init` raises what Ray's client raises, `fails` times, then connects."""

    def __init__(self, fails: int, exc: BaseException) -> None:
        self.fails, self.exc, self.calls = fails, exc, 0

    def init(self, **_kw: Any) -> None:
        self.calls += 1
        if self.calls <= self.fails:
            raise self.exc


def _group() -> RayWorkerGroup:
    config = RunConfig(
        Target("http://127.0.0.1:9", model="m"),
        Workload(input_len=8, output_len=4),
        LoadPlan(request_rate=1, duration_s=1.0),
    )
    return RayWorkerGroup(config, 2, "ray://127.0.0.1:10001")


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_workers, "CONNECT_RETRY_S", 0.0)


def test_an_initialization_failure_is_tried_again() -> None:
    ray, group = FlakyRay(2, ConnectionAbortedError(TRACEBACK)), _group()
    group._connect(ray)
    assert ray.calls == 3 and group._connected_here


def test_the_last_failure_is_one_line_with_the_reason() -> None:
    ray, group = FlakyRay(9, ConnectionAbortedError(TRACEBACK)), _group()
    with pytest.raises(ConfigError) as err:
        group._connect(ray)
    text = str(err.value)
    assert ray.calls == ray_workers.CONNECT_TRIES and not group._connected_here
    assert "\n" not in text
    assert "Initialization failure from server:" in text
    assert "Starting Ray client server failed" in text and "tried 3 times" in text


def test_other_errors_are_not_retried() -> None:
    ray, group = FlakyRay(9, ConnectionError("ray client connection timeout")), _group()
    with pytest.raises(ConfigError, match=r"cannot connect: ray client connection timeout$"):
        group._connect(ray)
    assert ray.calls == 1


def test_one_line() -> None:
    assert _one_line(ValueError("")) == "ValueError"
    assert _one_line(ValueError("bad address\nmore detail")) == "bad address"
    assert _one_line(ValueError("failed:\n\n  x\nthe reason\n")) == "failed: the reason"
