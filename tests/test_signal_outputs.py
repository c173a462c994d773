"""A signal while an output is written: the file is whole or absent, never half, never a
temporary file left behind; a signal during the final writes skips the rest with one line.

In-process tests send a real signal (`os.kill` from a second thread, the moment the
temporary file of the write shows up) while a large JSON is being written; the handler
records whether the file was already in place when it ran. The end-to-end test runs
`llmtop run` as a real process against the scripted server and sends two SIGINTs in quick
succession at several offsets, then checks every output that exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmtop.output.jsonfile import replace_atomic, write_json_atomic, write_text_atomic
from llmtop.output.writable import HeldSignals, Interrupted, write_each
from tests.conftest import ROOT
from tests.support.processes import scripted_server_process

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux signal semantics")

# big enough that its (pure-Python, indented) encoding takes far longer than a thread switch
BIG = {"rows": [{"i": i, "name": f"row-{i}", "v": [i, i / 3, None]} for i in range(60_000)]}


def _signal_when_temp_appears(folder: Path, sig: int) -> threading.Thread:
    """A thread that signals this process once a temporary JSON file exists in `folder`."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(n.startswith(".") for n in os.listdir(folder)):
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.0002)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class _Raising:
    """A handler that records whether `path` was complete when it ran, then raises."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[bool] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.seen.append(self.path.exists())
        raise KeyboardInterrupt(signal.Signals(signum).name)


@pytest.fixture
def handler_restored() -> Iterator[None]:
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in old.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_an_atomic_write_takes_effect_after_the_rename(
    sig: int, tmp_path: Path, handler_restored: None
) -> None:
    path = tmp_path / "out.json"
    handler = _Raising(path)
    signal.signal(sig, handler)
    watcher = _signal_when_temp_appears(tmp_path, sig)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, BIG)
    watcher.join(5)
    assert handler.seen == [True], "the handler ran before the file was in place"
    assert json.loads(path.read_text()) == BIG
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_a_text_export_is_held_the_same_way(tmp_path: Path, handler_restored: None) -> None:
    """`.hlog` / CSV exports: a generator of lines written piece by piece, signalled midway."""
    path = tmp_path / "tpot.hlog"
    handler = _Raising(path)
    signal.signal(signal.SIGTERM, handler)
    watcher = _signal_when_temp_appears(tmp_path, signal.SIGTERM)
    lines = [f"{i},{i * 7}\n" for i in range(400_000)]

    def slowly(f: Any) -> None:
        for line in lines:
            f.write(line)

    with pytest.raises(KeyboardInterrupt):
        replace_atomic(path, slowly)
    watcher.join(5)
    assert handler.seen == [True]
    assert path.read_text() == "".join(lines)
    assert write_text_atomic(path, "x\n") == path and path.read_text() == "x\n"


def test_held_signals_reach_the_enclosing_hold_and_then_the_handler(
    handler_restored: None,
) -> None:
    got: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    with HeldSignals() as outer:
        with HeldSignals() as inner:
            signal.raise_signal(signal.SIGTERM)
            assert inner.signals == [signal.SIGTERM] and not got
        assert outer.signals == [signal.SIGTERM] and not got
    assert got == [signal.SIGTERM]  # delivered once, after the outermost hold


def test_a_signal_during_the_final_writes_skips_the_rest_with_one_line(
    tmp_path: Path, handler_restored: None
) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    handler = _Raising(first)
    signal.signal(signal.SIGINT, handler)
    watcher = _signal_when_temp_appears(tmp_path, signal.SIGINT)
    with pytest.raises(Interrupted) as err:
        write_each(
            [
                ("--json", str(first), lambda: write_json_atomic(first, BIG)),
                ("--save", str(second), lambda: write_json_atomic(second, BIG)),
            ]
        )
    watcher.join(5)
    assert err.value.exit_code == 130
    assert str(err.value) == (
        f"interrupted by SIGINT while the outputs were written; written: --json {first}; "
        "skipped: --save"
    )
    assert json.loads(first.read_text()) == BIG and not second.exists()
    assert handler.seen == []  # taken by write_each, not delivered again
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# -- llmtop run, two SIGINTs in quick succession ----------------------------------------------

_ENDINGS = (
    "llmtop: interrupted; the results so far are above",  # both SIGINTs during the load
    "llmtop: interrupted by SIGINT while the outputs were written",  # the 2nd during a write
    "llmtop: aborted",  # the 2nd after the load, before the first write (nothing written)
    "llmtop: interrupted",
)


def _check_outputs(folder: Path, stdout: str, json_to_stdout: bool) -> list[str]:
    """Every output that exists parses whole; the names of those that exist."""
    present = []
    for p in sorted(folder.iterdir()):
        assert not p.name.startswith("."), f"a temporary file was left: {p.name}"
        text = p.read_text()
        assert text.endswith("\n"), f"{p.name} is cut"
        if p.suffix == ".jsonl":
            for line in text.splitlines():
                json.loads(line)
        else:
            json.loads(text)
        present.append(p.name)
    if json_to_stdout and stdout.strip():
        json.loads(stdout)  # `--json -`: all of it or none of it
        present.append("-")
    return present


@pytest.mark.parametrize(
    ("gap_s", "json_to_stdout"),
    [(0.0, False), (0.02, False), (0.1, False), ("write", False), ("write", True)],
)
def test_two_sigints_in_quick_succession_leave_only_whole_files(
    gap_s: float | str, json_to_stdout: bool, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with scripted_server_process("--ttft-ms", "20", "--itl-ms", "5") as url:
        args = [
            sys.executable, "-m", "llmtop", "run", "--url", url,
            "--duration", "60", "--request-rate", "40", "--input-len", "8", "--output-len", "20",
            "--json", "-" if json_to_stdout else str(out / "out.json"),
            "--save", str(out / "snap.json"), "--save-requests", str(out / "req.jsonl"),
            "--no-progress",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            deadline = time.monotonic() + 60
            while not (out / "req.jsonl").exists() or not (out / "req.jsonl").stat().st_size:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            time.sleep(1.0)  # the per-request log is being written: a load is running
            proc.send_signal(signal.SIGINT)
            if gap_s == "write":  # the second once an output's temporary file shows up
                while proc.poll() is None and not any(n.startswith(".") for n in os.listdir(out)):
                    time.sleep(0.0002)
            else:
                time.sleep(float(gap_s))
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            stdout, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
    # 130, or killed by the second SIGINT once the last line was out (CPython ends itself by
    # SIGINT when a KeyboardInterrupt cuts its exit): a shell shows both as 130
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err
    last = [ln for ln in err.splitlines() if ln.startswith("llmtop: ")][-1]
    assert last.startswith(_ENDINGS), err
    present = _check_outputs(out, stdout, json_to_stdout)
    assert "req.jsonl" in present  # written as the load ran, closed whole
