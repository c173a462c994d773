"""Prompt datasets read from a local file: JSONL of prompts, or the ShareGPT JSON layout.

Read once in the parent (never on the hot path); the request factory turns the prompts into
whole request bodies up front. Every problem is a one-line `ConfigError` naming the file and,
for JSONL, the line. A file is read up to MAX_DATASET_BYTES (the ShareGPT dump is 0.7 GB),
and JSON nested deeper than Python's parser goes is a bad line, not a RecursionError.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from llmtop.errors import ConfigError

FORMATS = ("auto", "jsonl", "sharegpt")
MAX_DATASET_BYTES = 2 << 30


def _read_text(path: Path) -> str:
    """The file's text, refused (one line) past MAX_DATASET_BYTES, never read past it."""
    with open(path, "rb") as f:
        data = f.read(MAX_DATASET_BYTES + 1)
    if len(data) > MAX_DATASET_BYTES:
        raise ConfigError(
            f"{path}: more than {MAX_DATASET_BYTES >> 30} GB; llmtop reads datasets up to that "
            "size: take a part of it"
        )
    return data.decode("utf-8")


def _loads(text: str) -> Any:
    """json.loads whose too-deep nesting is a JSONDecodeError like any other bad JSON."""
    try:
        return json.JSONDecoder().decode(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:100], 0) from None


def _open_dataset(path: str | Path, fmt: str) -> tuple[Path, str, str]:
    """The file's text and its format (`auto` resolved): one-line errors for both readers."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"dataset format {fmt!r}: expected one of {', '.join(FORMATS)}")
    try:
        text = _read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such dataset file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read dataset: {exc}") from None
    if fmt == "auto":
        fmt = "sharegpt" if text.lstrip().startswith("[") else "jsonl"
    return path, fmt, text


Prompt = tuple[str, int]  # (text, output tokens; 0 = the workload's output length)


def _output_len(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: output_len must be a whole number >= 1, got {value!r}")
    return value


def _read_jsonl(path: Path, text: str) -> list[Prompt]:
    out: list[Prompt] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            item = _loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ConfigError(f'{where}: expected {{"prompt": "...", "output_len"?: N}}')
        out.append((item["prompt"], _output_len(item.get("output_len"), where)))
    return out


def _read_sharegpt(path: Path, data: Any, tokens_per_char: float) -> list[Prompt]:
    """First human turn as the prompt; the first gpt reply's length (≈ chars/4) as output."""
    if not isinstance(data, list):
        raise ConfigError(f"{path}: ShareGPT layout is a JSON list of {{'conversations': [...]}}")
    out: list[Prompt] = []
    for item in data:
        conv = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(conv, list) or len(conv) < 1:
            continue
        human = next(
            (t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "human"),
            None,
        )
        reply = next(
            (t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "gpt"),
            None,
        )
        if not isinstance(human, str) or not human.strip():
            continue
        out_len = max(1, round(len(reply) * tokens_per_char)) if isinstance(reply, str) else 0
        out.append((human, out_len))
    return out


def load_dataset(
    path: str | Path,
    fmt: str = "auto",
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    tokens_per_char: float = 0.25,
) -> tuple[Prompt, ...]:
    """Prompts from `path`; `auto` picks ShareGPT for a JSON list, JSONL otherwise.

    ShareGPT replies carry text, not token counts, so their output length is estimated at
    `tokens_per_char` (about 4 characters a token for English with Llama tokenizers).
    """
    path, fmt, text = _open_dataset(path, fmt)
    if fmt == "sharegpt":
        try:
            data = _loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
        prompts = _read_sharegpt(path, data, tokens_per_char)
    else:
        prompts = _read_jsonl(path, text)
    if not prompts:
        raise ConfigError(f"{path}: the dataset holds no prompts")
    if shuffle:
        random.Random(seed).shuffle(prompts)
    if limit is not None:
        prompts = prompts[:limit]
    return tuple(prompts)


Turn = tuple[str, int]  # (user text, output tokens of the reply; 0 = the workload's)
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _turns(messages: Any, where: str, tokens_per_char: float) -> tuple[Turn, ...]:
    """User turns of one conversation: each user message, and its reply's length (≈ chars/4).

    Accepts ShareGPT's `[{"from": "human"|"gpt", "value"}]` and OpenAI's
    `[{"role": "user"|"assistant", "content"}]`; other roles (system, tool) are skipped.
    """
    if not isinstance(messages, list):
        raise ConfigError(f"{where}: a conversation is a list of messages")
    out: list[list[Any]] = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = _ROLES.get(str(m.get("from", m.get("role", ""))))
        text = m.get("value", m.get("content"))
        if not isinstance(text, str):
            continue
        if role == "user" and text.strip():
            out.append([text, 0])
        elif role == "assistant" and out and not out[-1][1]:
            out[-1][1] = max(1, round(len(text) * tokens_per_char))
    return tuple((t, n) for t, n in out)


def load_conversations(
    path: str | Path, fmt: str = "auto", tokens_per_char: float = 0.25
) -> tuple[tuple[Turn, ...], ...]:
    """Multi-turn conversations from `path`: ShareGPT JSON, or JSONL with one conversation a
    line (`{"conversations": [...]}`, `{"messages": [...]}`, or a single `{"prompt"}`).

    The assistant replies in the file only give each turn's output length; what a later turn
    resends is the model's actual answer (see `llmtop.load.conversations`).
    """
    path, fmt, text = _open_dataset(path, fmt)
    convs: list[tuple[Turn, ...]] = []
    if fmt == "sharegpt":
        try:
            data = _loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(data, list):
            raise ConfigError(f"{path}: ShareGPT layout is a JSON list of {{'conversations'}}")
        for i, item in enumerate(data):
            msgs = item.get("conversations") if isinstance(item, dict) else None
            if msgs is not None:
                convs.append(_turns(msgs, f"{path}: item {i}", tokens_per_char))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                item = _loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise ConfigError(f'{where}: expected {{"conversations": [...]}} or similar')
            if isinstance(item.get("prompt"), str):
                out = _output_len(item.get("output_len"), where)
                convs.append(((item["prompt"], out),))
                continue
            msgs = item.get("conversations", item.get("messages"))
            if msgs is None:
                raise ConfigError(
                    f'{where}: expected {{"conversations": [...]}}, {{"messages": [...]}} '
                    'or {"prompt": "..."}'
                )
            convs.append(_turns(msgs, where, tokens_per_char))
    convs = [c for c in convs if c]
    if not convs:
        raise ConfigError(f"{path}: the dataset holds no conversation with a user message")
    return tuple(convs)
