"""ONE bounded HTTP helper for every side request (detection, /metrics, /health).

Side requests go to servers llmtop does not control, often with the user's key, so each is
bounded in every direction:

- no redirects: a 3xx is an answer like any other, never followed, so `Authorization` and
  `--header` values are never forwarded to another host (or from https to http);
- no proxy at all: the load itself connects straight to the target, so its side requests do
  too (`http_proxy` would otherwise take loopback traffic elsewhere);
- a body cap (`max_bytes`): a 100 MB `/metrics` is refused after `max_bytes`, not read;
- one deadline for the whole exchange: a server that dribbles its headers a byte at a time
  is cut off at `timeout_s`;
- every failure (refused, reset, timeout, malformed status line, oversized header, TLS) is a
  `SideRequestError` with one redacted line: never a traceback, never a request's headers.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from llmtop.errors import describe_exception, redact

DEFAULT_MAX_BYTES = 8 << 20  # 8 MiB: vLLM's /metrics is ~50-200 kB
USER_AGENT = "llmtop"
_CHUNK = 64 << 10


class SideRequestError(Exception):
    """A side request that gave no usable answer: `where` (the redacted URL) and `why`."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        import json

        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None


def _connection(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SideRequestError(redact(url), "not an http(s) URL")
    try:
        port = parts.port
    except ValueError:
        raise SideRequestError(redact(url), "bad port") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout_s)
    return conn, path


def _cut_off(conn: http.client.HTTPConnection) -> None:
    """The deadline passed: shut the socket so a blocked read returns at once."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def request(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "GET",
    body: bytes | None = None,
    timeout_s: float = 3.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Reply:
    """One exchange under all the bounds above; a `Reply` for any status, else the error."""
    conn, path = _connection(url, timeout_s)
    deadline = time.monotonic() + timeout_s
    timer = threading.Timer(timeout_s, _cut_off, args=(conn,))
    timer.daemon = True
    timer.start()
    where = redact(url)
    try:
        conn.request(
            method,
            path,
            body=body,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})},
        )
        resp = conn.getresponse()
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > max_bytes:
            raise SideRequestError(
                where, f"answered {int(length):,} bytes, more than the {max_bytes:,} read"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError
            data = resp.read1(_CHUNK) if hasattr(resp, "read1") else resp.read(_CHUNK)
            if not data:
                break
            size += len(data)
            if size > max_bytes:
                raise SideRequestError(where, f"answered more than {max_bytes:,} bytes")
            chunks.append(data)
        if time.monotonic() > deadline:
            raise TimeoutError
        hdrs = {k.lower(): redact(v) for k, v in resp.getheaders()}
        return Reply(resp.status, hdrs, b"".join(chunks))
    except SideRequestError:
        raise
    except TimeoutError:
        raise SideRequestError(where, f"no answer within {timeout_s:g} s") from None
    except ssl.SSLError as exc:
        raise SideRequestError(where, f"TLS failed: {describe_exception(exc)}") from None
    except ConnectionRefusedError:
        raise SideRequestError(where, "connection refused") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if time.monotonic() > deadline:
            raise SideRequestError(where, f"no answer within {timeout_s:g} s") from None
        raise SideRequestError(where, _why(exc)) from None
    finally:
        timer.cancel()
        conn.close()


def _why(exc: BaseException) -> str:
    """What http.client's exceptions mean, in words (their reprs can carry the request)."""
    if isinstance(exc, http.client.LineTooLong):
        return "the answer has a header line that is too long"
    if isinstance(exc, http.client.BadStatusLine):
        return "the answer is not HTTP (malformed status line)"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer ended early"
    if isinstance(exc, http.client.HTTPException) and "got more than" in str(exc):
        return "the answer has too many header lines"
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
        return "the server closed the connection without an answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return describe_exception(exc)


def fetch(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    timeout_s: float = 3.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Reply | None:
    """A GET that tells nothing rather than raise: None when no usable answer came."""
    try:
        return request(url, headers, timeout_s=timeout_s, max_bytes=max_bytes)
    except SideRequestError:
        return None


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    """`GET url` answered 200 (a health check: a small body, no headers sent)."""
    reply = fetch(url, timeout_s=timeout_s, max_bytes=64 << 10)
    return reply is not None and reply.status == 200
