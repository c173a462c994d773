"""Outputs are checked before the load and written one by one after it.

A run can take an hour; finding out at its end that `--json` points into a read-only
folder, or that the disk is full, costs everything. So every output path is tried before
any load starts (a real file created and removed where the output will go, the free space
looked at: one-line error), and at the end each output is written on its own: one that
fails is reported after the others are written and the table printed.

A signal (SIGINT, SIGTERM, SIGHUP) that arrives while an output is written is held until
that write is whole (`HeldSignals`): a second Ctrl-C at the end of a run may skip the outputs
not yet written (one line, exit 130), never cut one in half or lose one that was on its way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from llmtop.errors import ConfigError, LlmtopError

MIN_FREE_BYTES = 1 << 20  # a folder with less than this free cannot take a snapshot
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(LlmtopError):
    """A run stopped by a signal after what it kept was written: one line, exit 130."""

    exit_code = 130


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def redeliver(signals: Iterable[int]) -> None:
    """Raise each signal again, now, to whatever handler is installed (a held one's turn).

    The handler runs before this returns (CPython checks for signals right after `raise`):
    a raising handler's KeyboardInterrupt comes out of here, SIG_DFL ends the process.
    """
    for signum in signals:
        signal.raise_signal(signum)


class HeldSignals:
    """Hold SIGINT, SIGTERM and SIGHUP for the duration of a write, then deliver them.

    Inside, a signal is only recorded (`signals`); on exit the previous handlers come back
    and each held signal is raised again, so it takes its normal effect (a KeyboardInterrupt,
    a counted interrupt, the end of the process) once the write is whole. `consume()` takes
    the held signals for the caller to act on instead. Nested holds pass their signals out
    to the enclosing one. Off the main thread (where Python cannot set handlers) it holds
    nothing: Python runs signal handlers in the main thread only, so the write is not cut
    by a KeyboardInterrupt there anyway. (Under asyncio's `add_signal_handler` the loop
    hears a signal through its wakeup fd whatever the handler: no llmtop output is written
    from such a loop.)
    """

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> HeldSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in HELD_SIGNALS:
                if signal.getsignal(sig) is None:  # set outside Python: cannot be restored
                    continue
                self._old[sig] = signal.signal(sig, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    @property
    def first(self) -> str | None:
        """The name of the first signal held, if any."""
        return signal_name(self.signals[0]) if self.signals else None

    def consume(self) -> list[int]:
        """The signals held so far, which will not be delivered again on exit."""
        taken, self.signals = self.signals, []
        return taken

    def ignore(self) -> None:
        """The process is on its way out: drop what was held and ignore these signals from now
        on (a further Ctrl-C must not cut the last line or turn exit 130 into a kill)."""
        for sig in self._old:
            signal.signal(sig, signal.SIG_IGN)
        self._old.clear()
        self.signals.clear()

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        redeliver(self.consume())


def _existing_dir(path: Path) -> Path:
    """The nearest folder above `path` that exists (the writer creates the rest)."""
    d = path.parent if str(path.parent) else Path(".")
    while not d.exists() and d != d.parent:
        d = d.parent
    return d


def check_writable(flag: str, path: str | os.PathLike[str] | None) -> None:
    """A one-line ConfigError now if `path` cannot be written later ('-' is stdout)."""
    if path is None or str(path) in ("", "-"):
        return
    p = Path(path)
    where = f"{flag} {path}"
    if p.is_dir():
        raise ConfigError(f"{where}: is a folder, not a file")
    if p.exists() and not p.is_file():  # /dev/stdout, /dev/full, a FIFO: written in place
        try:
            fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND)
        except OSError as exc:
            raise ConfigError(f"cannot write {where}: {exc.strerror or exc}") from None
        os.close(fd)
        return
    folder = _existing_dir(p)
    if not folder.is_dir():
        raise ConfigError(f"cannot write {where}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".llmtop-probe-", dir=folder)
    except OSError as exc:
        raise ConfigError(f"cannot write {where}: {exc.strerror or exc}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    if p.exists():
        try:
            with open(p, "r+b"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write {where}: {exc.strerror or exc}") from None
    try:
        st = os.statvfs(folder)
    except OSError:
        return
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        raise ConfigError(f"cannot write {where}: no space left in {folder}")


def check_outputs(outputs: dict[str, str | None]) -> None:
    """Every output flag → path checked before the load; two flags on one file are refused."""
    seen: dict[str, str] = {}
    for flag, path in outputs.items():
        if not path or path == "-":
            continue
        p = Path(path)
        key = str(p.resolve()) if p.exists() and stat.S_ISREG(p.stat().st_mode) else str(p)
        if key in seen:
            raise ConfigError(f"{seen[key]} and {flag} name the same file {path}")
        seen[key] = flag
        check_writable(flag, path)


def write_each(writers: list[tuple[str, str | None, Callable[[], object]]]) -> dict[str, str]:
    """Run each (flag, path, write) whose path is set; flag → one-line error of each failure.

    A failure never stops the writers after it. A signal does, once the write under way is
    whole: the outputs after it are skipped and `Interrupted` (exit 130) says which were
    written and which were not. Before this there was a load to stop gracefully; now a
    signal only means "stop", so the writes already done are the result.
    """
    errors: dict[str, str] = {}
    written: list[str] = []
    skipped: list[str] = []
    with HeldSignals() as held:
        for flag, path, write in writers:
            if not path:
                continue
            if held.signals:
                skipped.append(flag)
                continue
            try:
                write()
                written.append(f"{flag} {path}")
            except LlmtopError as exc:
                errors[flag] = str(exc).splitlines()[0]
            except OSError as exc:
                errors[flag] = f"cannot write {flag} {path}: {exc.strerror or exc}"
        name = held.first
        held.consume()  # acted on below, not delivered again
    if name is not None:
        parts = [f"written: {', '.join(written)}" if written else "nothing written"]
        if skipped:
            parts.append(f"skipped: {', '.join(skipped)}")
        parts += list(errors.values())
        raise Interrupted(
            f"interrupted by {name} while the outputs were written; " + "; ".join(parts)
        )
    return errors
