"""Outputs are checked before the load and written one by one after it.

A run can take an hour; finding out at its end that `--json` points into a read-only
folder, or that the disk is full, costs everything. So every output path is tried before
any load starts (a real file created and removed where the output will go, the free space
looked at: one-line error), and at the end each output is written on its own: one that
fails is reported after the others are written and the table printed.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from llmtop.errors import ConfigError, LlmtopError

MIN_FREE_BYTES = 1 << 20  # a folder with less than this free cannot take a snapshot


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

    A failure never stops the writers after it.
    """
    errors: dict[str, str] = {}
    for flag, path, write in writers:
        if not path:
            continue
        try:
            write()
        except LlmtopError as exc:
            errors[flag] = str(exc).splitlines()[0]
        except OSError as exc:
            errors[flag] = f"cannot write {flag} {path}: {exc.strerror or exc}"
    return errors
