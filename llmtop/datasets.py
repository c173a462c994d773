"""Prompt datasets read from a local file: JSONL of prompts, or the ShareGPT JSON layout.

Read once in the parent (never on the hot path); the request factory turns the prompts into
whole request bodies up front. Every problem is a one-line `ConfigError` naming the file and,
for JSONL, the line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from llmtop.errors import ConfigError

FORMATS = ("auto", "jsonl", "sharegpt")
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
            item = json.loads(line)
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
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError(f"dataset format {fmt!r}: expected one of {', '.join(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such dataset file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read dataset: {exc}") from None
    if fmt == "auto":
        fmt = "sharegpt" if text.lstrip().startswith("[") else "jsonl"
    if fmt == "sharegpt":
        try:
            data = json.loads(text)
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
