"""Errors that end a run with a one-line message instead of a traceback, and the ONE redaction
function every string that leaves the process goes through (terminal, JSON, snapshots,
exports, engine logs, the UI).

`redact()` lives here, at the bottom of the layers, so that every part can use it: a secret
must never depend on which path a string took to the outside.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Exit codes (README, "Exit codes"): 0 the run met its SLO (or had none), 1 an error, 2 bad
# flags, 3 the SLO was breached (`run --slo`) or no load met it (`knee`), 130 interrupted.
EXIT_SLO_BREACHED = 3


class LlmtopError(Exception):
    """A problem the user can act on; the CLI prints `llmtop: <message>` and exits non-zero."""

    exit_code = 1


class TargetError(LlmtopError):
    """The server cannot be used: unreachable, wrong model, refused our requests."""


class ConfigError(LlmtopError):
    """Flags or files that make no sense together."""

    exit_code = 2


# -- redaction -------------------------------------------------------------------------------

MASK = "***"
# Values shorter than this are not searched for in free text (a 2-character header value
# would mask every "42" in a table); they are still masked wherever their flag, header name,
# `Bearer` or query parameter stands beside them.
MIN_SECRET_LEN = 6

# A name that says "the value beside me is a secret": flags (--api-key, --hf-token), query
# parameters (?access_token=), header names, dict keys, environment variables (HF_TOKEN).
_SECRET_NAME = re.compile(
    r"(?:^|[-_.])(?:api[-_]?key|apikey|key|token|access[-_]?token|auth[-_]?token|secret|"
    r"client[-_]?secret|password|passwd|pwd|credentials?|authorization|auth|signature|sig|"
    r"cookie|session[-_]?id)$",
    re.IGNORECASE,
)
_SECRET_HEADERS = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "cookie",
    "set-cookie",
)

_lock = threading.Lock()
_secrets: set[str] = set()
_header_names: set[str] = set()
_secret_re: re.Pattern[str] | None = None
_header_re: re.Pattern[str] | None = None


def is_secret_name(name: str) -> bool:
    """True for a flag, parameter, header or key name whose value must not be shown."""
    return bool(_SECRET_NAME.search(name.strip().lstrip("-")))


def _rebuild() -> None:
    global _secret_re, _header_re, _suspect
    long_ones = sorted((s for s in _secrets if len(s) >= MIN_SECRET_LEN), key=len, reverse=True)
    # Short values only where they stand alone (not inside an encoded histogram or a
    # longer word); long ones anywhere (a random match of 12+ characters does not happen).
    alts = [
        re.escape(v) if len(v) >= 12 else rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])"
        for v in long_ones
    ]
    _secret_re = re.compile("|".join(alts)) if alts else None
    names = sorted({*_SECRET_HEADERS, *_header_names}, key=len, reverse=True)
    _header_re = re.compile(
        r"(?<![A-Za-z0-9-])(" + "|".join(re.escape(n) for n in names) + r")"
        r"([\"']?\s*[:=]\s*[\"']?)([^\r\n\"',;}]+)",
        re.IGNORECASE,
    )
    extra = "".join("|" + re.escape(n) for n in sorted(_header_names))
    _suspect = re.compile(_SUSPECT_BASE + (f"|(?i:{extra[1:]})" if extra else ""))


def register_secret(value: str | None, header: str | None = None) -> None:
    """Remember a value (an API key, a header's value) that must never be written out.

    `header` names the header it is sent in, so `Name: value` in any text is masked too,
    however short the value.
    """
    with _lock:
        if value and value.strip():
            _secrets.add(value.strip())
        if header and header.strip():
            _header_names.add(header.strip())
        _rebuild()


def forget_secrets() -> None:
    """Tests only: start from an empty registry."""
    with _lock:
        _secrets.clear()
        _header_names.clear()
        _rebuild()


def _url_secrets(url: str) -> Iterable[str]:
    """The password and token-like query values of a URL given on the command line."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
    except ValueError:
        return
    if parts.password:
        yield parts.password
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if is_secret_name(name):
            yield value


def register_secrets_from_argv(
    argv: Iterable[str], environ: Mapping[str, str] | None = None
) -> None:
    """Register every secret the command line and environment carry, before anything runs.

    Flags whose name says secret (`--api-key V`, `--hf-token=V`, also after `--` for an
    engine), `--header 'Name: value'`, `--engine-env NAME=VALUE` with a secret NAME, URL
    passwords and token query values, and environment variables such as OPENAI_API_KEY and
    HF_TOKEN.
    """
    args = list(argv)
    for i, arg in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else None
        flag, eq, inline = arg.partition("=")
        value = inline if eq else nxt
        if not arg.startswith("-") or value is None:
            if "://" in arg:
                for s in _url_secrets(arg):
                    register_secret(s)
            continue
        if flag in ("--header", "-H"):
            name, sep, hval = value.partition(":")
            if sep:
                register_secret(hval, header=name)
        elif flag == "--engine-env":
            name, sep, evalue = value.partition("=")
            if sep and is_secret_name(name):
                register_secret(evalue)
        elif flag.startswith("--") and is_secret_name(flag):
            register_secret(value)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if is_secret_name(name) and value:
            register_secret(value)


_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@?#\"'<>]+@")
_QUERY = re.compile(r"([?&;])([^=&;\s#\"'<>]+)=([^&;\s#\"'<>]*)")
_BEARER = re.compile(r"(?i)(?<![A-Za-z0-9])(bearer)\s+[A-Za-z0-9._~+/=:-]{4,}")
_PAIR = re.compile(r"([\"']?)([A-Za-z][\w.-]*)\1\s*:\s*([\"'])([^\"'\r\n]*)\3")
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w.-]*)(=|\s+)(\"[^\"]*\"|'[^']*'|[^\s\"',;]+)")
_ENV = re.compile(r"(?<![A-Za-z0-9+/_])([A-Za-z][A-Za-z0-9_]*)=([^\s\"',;&?#]+)")
# Every terminal control: CSI, OSC, DCS/SOS/PM/APC strings, other escapes, 8-bit C1, C0
# (but tab and newline), DEL, and the bidirectional overrides that reorder what is shown.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
# What llmtop itself writes to a terminal and may keep there: colours (SGR), erase-in-line
# and carriage return (the progress line). Nothing that moves the cursor elsewhere, sets a
# title, writes the clipboard or makes a link.
_TERMINAL_KEEP = re.compile(r"\x1b\[[0-9;:]*m|\x1b\[[0-2]?K|\r")
_SUSPECT_BASE = (
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]|://|[?&;=]"
    r"|(?i:bearer|token|auth|cookie|key|secret|passw|pwd|sig|credential|session)"
)
_suspect = re.compile(_SUSPECT_BASE)


def _mask_named(m: re.Match[str], name_group: int, value_group: int) -> str:
    if not is_secret_name(m.group(name_group)):
        return m.group(0)
    value = m.group(value_group)
    start, end = m.span(value_group)
    head = m.group(0)[: start - m.start()]
    quote = value[0] if value[:1] in ("'", '"') and value[-1:] == value[:1] else ""
    return head + quote + MASK + quote + m.group(0)[end - m.start() :]


def _keep_terminal(m: re.Match[str]) -> str:
    return m.group(0) if _TERMINAL_KEEP.fullmatch(m.group(0)) else ""


def _mask_patterns(text: str) -> str:
    """Secrets and secret-shaped values masked (the text has no controls left)."""
    if _secret_re is not None:
        text = _secret_re.sub(MASK, text)
    if not _suspect.search(text):
        return text
    text = _URL_USERINFO.sub(r"\1" + MASK + "@", text)
    text = _QUERY.sub(lambda m: _mask_named(m, 2, 3), text)
    if _header_re is not None:
        text = _header_re.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + " " + MASK, text)
    text = _PAIR.sub(lambda m: _mask_named(m, 2, 4), text)
    text = _FLAG.sub(lambda m: _mask_named(m, 1, 3), text)
    return _ENV.sub(lambda m: _mask_named(m, 1, 2), text)


def _redact_text(text: str, terminal: bool) -> str:
    """Controls go first, so that none can split a secret and hide it from the patterns."""
    if not terminal:
        return _mask_patterns(_CONTROL.sub("", text.replace("\r\n", "\n")))
    kept = _CONTROL.sub(_keep_terminal, text)
    plain = _CONTROL.sub("", kept)
    masked = _mask_patterns(plain)
    # Something secret-shaped (perhaps split by a colour code): show it plain and masked.
    return masked if masked != plain else kept


def redact(value: Any, *, terminal: bool = False) -> Any:
    """The one redaction: secrets masked, terminal controls removed, structure kept.

    Strings lose registered secrets, `user:pass@` in URLs, token-like query values,
    `Authorization:`/`Bearer` values, secret flags' values (`--api-key X`, `--hf-token=X`),
    secret environment assignments (`HF_TOKEN=X`) and every terminal control character
    (escape sequences from server-controlled text). Dicts and lists are walked: a value
    under a secret key, or after a secret flag in an argv list, is masked. `terminal=True`
    keeps the colours, erase-line and carriage return llmtop writes itself.
    """
    if isinstance(value, str):
        return _redact_text(value, terminal)
    if isinstance(value, Mapping):
        return {
            k: (
                MASK
                if isinstance(k, str) and is_secret_name(k) and isinstance(v, str) and v
                else redact(v, terminal=terminal)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        out: list[Any] = []
        mask_next = False
        for item in value:
            if mask_next and isinstance(item, str):
                out.append(MASK)
                mask_next = False
                continue
            mask_next = (
                isinstance(item, str)
                and item.startswith("-")
                and "=" not in item
                and is_secret_name(item)
            )
            out.append(redact(item, terminal=terminal))
        return out if isinstance(value, list) else tuple(out)
    return value


def describe_exception(exc: BaseException) -> str:
    """One redacted line for an exception, never its repr (which can carry request headers)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    line = f"{name}: {text}" if text else name
    line = redact(line)
    return line if len(line) <= 300 else line[:297] + "..."


_rebuild()
