"""Errors that end a run with a one-line message instead of a traceback."""


class LlmtopError(Exception):
    """A problem the user can act on; the CLI prints `llmtop: <message>` and exits non-zero."""

    exit_code = 1


class TargetError(LlmtopError):
    """The server cannot be used: unreachable, wrong model, refused our requests."""


class ConfigError(LlmtopError):
    """Flags or files that make no sense together."""

    exit_code = 2
