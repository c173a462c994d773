"""JSON files: ONE cleaner (JSON has no NaN or infinity) and ONE atomic, fsync'd writer.

Every JSON llmtop writes (`--json`, snapshots, `compare --json`, comparison tables) goes
through here, so a crash, a full disk or a signal never leaves half a file (a signal that
arrives during the write takes effect once the file is renamed into place: `HeldSignals`),
and they all share one permission rule (the umask's, like any file a program creates). The
cleaner redacts (`llmtop.errors.redact`): no secret and no terminal control reaches a JSON file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from llmtop.errors import redact
from llmtop.output.writable import HeldSignals


def clean(obj: Any) -> Any:
    """NaN → null, ±inf → "inf" / "-inf", tuples → lists, keys → str; redacted."""
    return _clean(redact(obj))


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return ("inf" if obj > 0 else "-inf") if math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def dumps(data: Any, indent: int | None = 2) -> str:
    return json.dumps(clean(data), indent=indent)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Temporary file beside `path`, fsync, rename: never a half-written file (or OSError).

    A path that is not a regular file (`/dev/stdout`, a FIFO, a device) is written in
    place: renaming over it would replace the device node itself. SIGINT, SIGTERM and SIGHUP
    are held while it writes and delivered after: the file is whole (or untouched) first.
    """

    def dump(f: TextIO) -> None:
        json.dump(clean(data), f, indent=indent)
        f.write("\n")

    return replace_atomic(path, dump)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Text (an .hlog, a CSV) written as `write_json_atomic` writes JSON."""
    return replace_atomic(path, lambda f: f.write(text))


def replace_atomic(path: str | Path, write: Callable[[TextIO], object]) -> Path:
    """Run `write` on a temporary file beside `path`, fsync, rename; signals held meanwhile."""
    with HeldSignals():
        return _replace_atomic(Path(path), write)


def _replace_atomic(path: Path, write: Callable[[TextIO], object]) -> Path:
    if path.exists() and not path.is_file():
        with open(path, "w", encoding="utf-8") as f:
            write(f)
        return path
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the umask decides, as for any file
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path
