"""Before the load starts: reach the server, pick the model, learn what requests it accepts.

Runs in the parent with aiohttp (nothing here is timed). Each refusal becomes a one-line
`TargetError`; a 400 on an optional field makes us drop that field, so servers that reject
unknown fields (trtllm-serve's `extra="forbid"`) get only what they accept.

The target is not trusted: redirects are not followed (they would carry the key to wherever
the server points), every body is read up to a cap, and an exception is described in words,
never by its repr (aiohttp's carries the request's headers, `Authorization` included).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from llmtop.backends.http import error_detail
from llmtop.backends.openai import api_path, body_fields, parse_url
from llmtop.config import Dialect, RunConfig, Target
from llmtop.engines.tokenizer import TextPieces, text_pieces
from llmtop.errors import TargetError, describe_exception, redact

PROBE_INPUT_TOKENS = 8
PROBE_OUTPUT_TOKENS = 3
TEXT_POOL = 32
REASONING_KEYS = (b'"reasoning_content":"', b'"reasoning":"')  # a non-null reasoning delta
MAX_JSON_BYTES = 8 << 20  # a model list or a /tokenize answer
MAX_ERROR_BYTES = 64 << 10  # an error body: its first words are all we show
MAX_PROBE_BYTES = 1 << 20  # the test request asks for 3 tokens
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "po", "an", "el", "or", "ti")


@dataclass(frozen=True)
class Preflight:
    model: str
    models: tuple[str, ...]
    dialect: Dialect
    text_prompts: tuple[str, ...]
    server_header: str
    notes: tuple[str, ...]
    prefix_texts: tuple[str, ...] = ()  # text prompts' prefix groups (llmtop.engines.tokenizer)
    unique_words: tuple[str, ...] = ()  # one-token words for text prompts' unique starts


def _detail(body: bytes, limit: int = 160) -> str:
    """An error body in a few words: an HTML page (a server that is not an LLM API) by its
    title, anything else by its message, cut at a word boundary, never mid-word."""
    head = body[:4096].decode("utf-8", "replace")
    if re.match(r"\s*<(!doctype html|html|head|body)", head, re.I):
        found = re.search(r"<title[^>]*>(.*?)</title>", head, re.I | re.S) or re.search(
            r"<h1[^>]*>(.*?)</h1>", head, re.I | re.S
        )
        words = " ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split()) if found else ""
        return f"an HTML page{f' ({words[:80]!r})' if words else ''}, not an LLM API's answer"
    text = " ".join(error_detail(body).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _why(exc: BaseException, timeout_s: float | None = None) -> str:
    """An aiohttp failure in words: never its repr, which carries the request's headers."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer in time" if timeout_s is None else f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer's body was cut or malformed"
    if isinstance(exc, aiohttp.ClientResponseError):  # bad status line, oversized header...
        words = " ".join(str(exc.message).replace("^", " ").split())
        return f"the answer is not valid HTTP ({redact(words)[:160]})"
    if isinstance(exc, RecursionError):
        return "the answer's JSON is nested too deeply"
    return describe_exception(exc)


def _redirected(url: str, resp: aiohttp.ClientResponse) -> TargetError:
    where = redact(resp.headers.get("Location", "elsewhere"))[:200]
    return TargetError(
        f"{url} redirected to {where} (HTTP {resp.status}): llmtop does not follow redirects, "
        "which would carry the key along; give the final address with --url"
    )


async def _body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of a body (a hostile server may send gigabytes)."""
    data = await resp.content.read(limit + 1)
    if len(data) > limit:
        raise TargetError(f"{resp.url.host} answered more than {limit:,} bytes")
    return data


async def _error_body(resp: aiohttp.ClientResponse) -> bytes:
    return await _body(resp, MAX_ERROR_BYTES)


async def _json(resp: aiohttp.ClientResponse, limit: int = MAX_JSON_BYTES) -> Any:
    return json.loads(await _body(resp, limit))


def cleartext_key_warning(target: Target) -> str | None:
    """A key about to travel in clear text to another machine: say so (once, as a note)."""
    if not target.api_key:
        return None
    endpoint = parse_url(target.url)
    if endpoint.ssl:
        return None
    host = endpoint.host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    if loopback:
        return None
    source = (
        "OPENAI_API_KEY (from the environment)"
        if os.environ.get("OPENAI_API_KEY") == target.api_key
        else "the API key"
    )
    return (
        f"warning: {source} is sent in clear text over plain http to {host}: use https, "
        "or unset it if this server needs no key"
    )


def _auth_error(url: str, status: int) -> TargetError:
    return TargetError(
        f"{url} refused the request (HTTP {status}): check --api-key / OPENAI_API_KEY and --header"
    )


async def _get_models(
    session: aiohttp.ClientSession, base: str, target: Target
) -> tuple[list[str], str, str]:
    """(models served, Server header, why /v1/models did not answer: "" when it did)."""
    url = f"{base}/v1/models"
    try:
        async with session.get(url, headers=target.auth_headers(), allow_redirects=False) as resp:
            server = resp.headers.get("Server", "")
            if resp.status in (401, 403):
                raise _auth_error(target.url, resp.status)
            if 300 <= resp.status < 400:
                raise _redirected(target.url, resp)
            if resp.status != 200:
                return [], server, f"HTTP {resp.status}: {_detail(await _error_body(resp))}"
            data = await _json(resp)
    except aiohttp.ClientConnectorError as exc:
        raise TargetError(f"cannot connect to {target.url}: {exc.strerror or exc}") from None
    except (aiohttp.ClientError, ValueError, TimeoutError, RecursionError) as exc:
        raise TargetError(f"{target.url} did not answer /v1/models properly: {_why(exc)}") from None
    cards = data.get("data") if isinstance(data, dict) else None
    cards = cards if isinstance(cards, list) else []
    ids = (m.get("id") for m in cards if isinstance(m, dict))
    models = [m for m in ids if isinstance(m, str)]
    return [m for m in models if m], server, ""


def _probe_body(config: RunConfig, dialect: Dialect, text: str) -> dict[str, Any]:
    fields = body_fields(
        dataclasses.replace(
            config,
            workload=dataclasses.replace(config.workload, output_len=PROBE_OUTPUT_TOKENS),
        ),
        dialect,
    )
    if config.target.api == "chat":
        return {"messages": [{"role": "user", "content": text}], **fields}
    if dialect.token_id_prompts:
        lo, hi = dialect.token_vocab
        rng = random.Random(1)
        return {"prompt": [rng.randrange(lo, hi) for _ in range(PROBE_INPUT_TOKENS)], **fields}
    return {"prompt": text, **fields}


async def _probe(
    session: aiohttp.ClientSession, url: str, target: Target, body: dict[str, Any]
) -> tuple[int, str, bool, bool]:
    """POST one short streaming request.

    (status, error detail, usage on every chunk, reasoning deltas seen).
    """
    try:
        async with session.post(
            url, json=body, headers=target.auth_headers(), allow_redirects=False
        ) as resp:
            if 300 <= resp.status < 400:
                raise _redirected(target.url, resp)
            if resp.status != 200:
                return resp.status, _detail(await _error_body(resp)), False, False
            chunks = 0
            with_usage = 0
            reasoning = False
            seen = 0
            async for line in resp.content:
                seen += len(line)
                if seen > MAX_PROBE_BYTES:
                    raise TargetError(
                        f"{target.url} streamed more than {MAX_PROBE_BYTES:,} bytes for a "
                        f"{PROBE_OUTPUT_TOKENS}-token test request"
                    )
                line = line.strip()
                if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                    continue
                if b'"choices":[]' in line:
                    continue
                chunks += 1
                if b'"completion_tokens"' in line:
                    with_usage += 1
                reasoning = reasoning or any(k in line for k in REASONING_KEYS)
                if b'"error"' in line:
                    return 200, error_detail(line[5:].strip()), False, False
            return 200, "", chunks > 0 and with_usage == chunks, reasoning
    except aiohttp.ClientConnectorError as exc:
        raise TargetError(f"cannot connect to {target.url}: {exc.strerror or exc}") from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TargetError(f"{target.url} failed a test request: {_why(exc)}") from None


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]


async def _tokenize(
    session: aiohttp.ClientSession, base: str, target: Target, text: str
) -> int | None:
    try:
        async with session.post(
            f"{base}/tokenize",
            json={"model": target.model, "prompt": text, "add_special_tokens": False},
            headers=target.auth_headers(),
            allow_redirects=False,
        ) as resp:
            if resp.status != 200:
                return None
            data = await _json(resp)
    except (aiohttp.ClientError, ValueError, TargetError, RecursionError, TimeoutError):
        return None
    if not isinstance(data, dict):
        return None
    count = data.get("count")
    if isinstance(count, int):
        return count
    tokens = data.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


async def _sized_text(
    session: aiohttp.ClientSession, base: str, target: Target, n_tokens: int, rng: random.Random
) -> tuple[str, int | None]:
    """A text of `n_tokens` tokens by the server's own tokenizer (None: it has no /tokenize)."""
    words = _words(rng, max(n_tokens, 1))
    count = await _tokenize(session, base, target, " ".join(words))
    if count is None:
        return " ".join(words[: max(1, round(n_tokens / 1.3))]), None
    for _ in range(12):  # scale by the ratio, then walk a word at a time
        if count == n_tokens:
            break
        if abs(count - n_tokens) > 3:
            keep = max(1, round(len(words) * n_tokens / max(count, 1)))
            words = words[:keep] if keep < len(words) else words + _words(rng, keep - len(words))
        elif count > n_tokens:
            words = words[:-1] if len(words) > 1 else words
        else:
            words = words + _words(rng, 1)
        new = await _tokenize(session, base, target, " ".join(words))
        if new is None:
            break
        count = new
    return " ".join(words), count


async def _text_prompts(
    session: aiohttp.ClientSession, base: str, target: Target, n_tokens: int, seed: int
) -> tuple[tuple[str, ...], str | None]:
    """Distinct texts of `n_tokens` tokens each, sized with /tokenize where there is one."""
    rng = random.Random(seed)
    texts: list[str] = []
    counts: list[int] = []
    for _ in range(TEXT_POOL):
        text, count = await _sized_text(session, base, target, n_tokens, rng)
        texts.append(text)
        if count is not None:
            counts.append(count)
    if not counts:
        return tuple(texts), "the server has no /tokenize: text prompt lengths are approximate"
    off = [c for c in counts if c != n_tokens]
    if off:
        mean = sum(counts) / len(counts)
        return tuple(texts), (
            f"{len(off)} of {len(counts)} text prompts missed {n_tokens} tokens"
            f" (mean {mean:.1f}); usage reports the real count"
        )
    return tuple(texts), None


async def run_preflight(config: RunConfig, timeout_s: float = 30.0) -> Preflight:
    target = config.target
    endpoint = parse_url(target.url)
    scheme = "https" if endpoint.ssl else "http"
    base = f"{scheme}://{endpoint.host_header}{endpoint.base_path}"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    notes: list[str] = []
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if target.api == "triton":
            return await _triton(session, base, config)
        models, server, refused = await _get_models(session, base, target)
        model = target.model
        if not model:
            if refused:
                raise TargetError(
                    f"{target.url} did not list models at /v1/models ({refused}): is it an "
                    "OpenAI-compatible server? If it is, pass --model"
                )
            if not models:
                raise TargetError(f"{target.url} lists no models at /v1/models: pass --model")
            model = models[0]
        elif models and model not in models:
            raise TargetError(
                f"model {model!r} is not served by {target.url}; it serves: "
                + ", ".join(models[:10])
                + (f" and {len(models) - 10} more" if len(models) > 10 else "")
            )
        target = dataclasses.replace(target, model=model)
        config = dataclasses.replace(config, target=target)
        url = base + api_path(endpoint, target.api)
        dialect = Dialect(
            token_id_prompts=target.api != "chat" and config.workload.prompt_format != "text"
        )
        probe_text = " ".join(_words(random.Random(2), PROBE_INPUT_TOKENS))
        # Optional fields, dropped one at a time while the server answers 400.
        fallbacks = [
            ("continuous_usage", "usage on every chunk"),
            ("include_usage", "stream_options"),
            ("ignore_eos", "ignore_eos"),
            ("token_id_prompts", "token-id prompts"),
        ]
        while True:
            status, detail, per_chunk_usage, reasoning = await _probe(
                session, url, target, _probe_body(config, dialect, probe_text)
            )
            if status == 200 and not detail:
                break
            if status in (401, 403):
                raise _auth_error(target.url, status)
            if status == 404 and "model" in detail.lower():
                raise TargetError(f"model {model!r} was refused by {target.url}: {detail}")
            if status == 404:
                raise TargetError(f"{url} not found (HTTP 404): is --api right? {detail}")
            if status in (400, 422):
                while fallbacks and not getattr(dialect, fallbacks[0][0]):
                    fallbacks.pop(0)
                if fallbacks:
                    field_name, what = fallbacks.pop(0)
                    dialect = dataclasses.replace(dialect, **{field_name: False})
                    notes.append(f"server refused {what}; not sending it ({detail})")
                    continue
            if status == 200:
                raise TargetError(f"{target.url} sent an error in its stream: {detail}")
            raise TargetError(f"{target.url} answered a test request with HTTP {status}: {detail}")
        if reasoning:
            dialect = dataclasses.replace(dialect, reasoning=True)
            notes.append("the model streams reasoning: its tokens are counted apart")
        if dialect.continuous_usage and not per_chunk_usage:
            dialect = dataclasses.replace(dialect, continuous_usage=False)
            notes.append("no usage on every chunk: one token per content chunk is assumed")
        pieces = TextPieces(())
        if wants_text(config, dialect):
            wl = config.workload

            async def count(text: str) -> int | None:
                return await _tokenize(session, base, target, text)

            groups, plen = (wl.prefix_groups, wl.prefix_len) if wl.prefix_groups else (0, 0)
            pieces = await text_pieces(count, wl.input_len, groups, plen, wl.seed, TEXT_POOL)
            notes.extend(pieces.notes)
            if target.api == "chat":
                notes.append("chat prompts are sized without the chat template, which adds tokens")
    return Preflight(
        model,
        tuple(models),
        dialect,
        pieces.bodies,
        server,
        tuple(notes),
        pieces.prefixes,
        pieces.words,
    )


def wants_text(config: RunConfig, dialect: Dialect) -> bool:
    """Synthetic text prompts are needed: chat, text format, or conversation turns."""
    if config.dataset or config.trace or config.conversations:
        return False
    return config.target.api == "chat" or not dialect.token_id_prompts or config.workload.turns != 1


async def _triton(session: aiohttp.ClientSession, base: str, config: RunConfig) -> Preflight:
    """Triton's generate_stream: no /v1/models, text prompts, readiness at /v2/health/ready."""
    from llmtop.backends.triton import triton_preflight

    target = config.target
    if not target.model:
        raise TargetError("--api triton needs --model (the Triton model to call)")
    dialect, notes = await triton_preflight(session, base, config, target.auth_headers())
    texts, note = await _text_prompts(
        session, base, target, config.workload.input_len, config.workload.seed
    )
    all_notes = (*notes, note) if note else tuple(notes)
    return Preflight(target.model, (target.model,), dialect, texts, "", all_notes)


def preflight(config: RunConfig) -> Preflight:
    pre = asyncio.run(run_preflight(config))
    warning = cleartext_key_warning(config.target)
    return dataclasses.replace(pre, notes=(warning, *pre.notes)) if warning else pre
