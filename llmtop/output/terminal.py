"""The terminal as an exit point: stdout and stderr pass through `redact()` once installed.

Installed by the CLI's entry point before any command runs, so every line any part of llmtop
prints (click.echo, print, warnings, the table, one-line errors) is scrubbed of secrets and
of terminal controls a server could have smuggled into a string. The live UI draws through
Textual's own driver (it writes to `sys.__stderr__`), so what it shows is redacted where it
enters the UI instead.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from llmtop.errors import redact


class RedactingStream:
    """A text stream that writes `redact(text, terminal=True)` to the stream it wraps."""

    def __init__(self, raw: TextIO) -> None:
        self._raw = raw

    @property
    def raw(self) -> TextIO:
        return self._raw

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # click probes with b"" to tell text from binary
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._raw.write(redact(text, terminal=True))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, fileno, isatty, ...
        if name == "buffer":  # bytes would bypass the redaction
            raise AttributeError(name)
        return getattr(self._raw, name)


def guard_terminal() -> None:
    """Wrap sys.stdout and sys.stderr (once; idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, RedactingStream(stream))
