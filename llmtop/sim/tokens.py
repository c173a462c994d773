"""The simulator's pseudo-tokenizer: cheap, deterministic, and shared by every endpoint.

Text counts one token per 4 characters (rounded up), which is close to what BPE tokenizers
give for English. `/tokenize`, prompt accounting and chat templating all use these helpers,
so a client that tokenizes through the server sees the same counts the engine bills.
Generated tokens are 4-character words, so generated text re-tokenizes to the same count.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

CHARS_PER_TOKEN = 4

# Llama-3 special tokens: <|begin_of_text|>, <|start_header_id|>, <|end_header_id|>,
# <|eot_id|>, "\n\n", and "assistant".
BOS, START_HEADER, END_HEADER, EOT, NEWLINES, ASSISTANT = (
    128000,
    128006,
    128007,
    128009,
    271,
    78191,
)
_ROLE_IDS = {"system": 9125, "user": 882, "assistant": ASSISTANT, "tool": 14506}

# Output vocabulary: 4-character pieces, JSON-safe (no quotes, backslashes, controls).
WORDS: tuple[str, ...] = (
    " the",
    " sim",
    " and",
    " llm",
    " top",
    " gpu",
    " for",
    " hot",
    " run",
    " kv.",
    " one",
    " two",
    " fit",
    " map",
    " now",
    " way",
    " big",
    " low",
    " set",
    " new",
    " ok,",
    " yes",
    " end",
    " net",
    " all",
    " out",
    " key",
    " max",
    " min",
    " raw",
    " fan",
    " log",
)


def text_token_ids(text: str, vocab: int = 128000) -> list[int]:
    """Token ids of `text`: one per 4-character slice, a stable hash of the slice."""
    step = CHARS_PER_TOKEN
    return [
        zlib.crc32(text[i : i + step].encode("utf-8", "surrogatepass")) % vocab
        for i in range(0, len(text), step)
    ]


def count_text_tokens(text: str) -> int:
    """len(text_token_ids(text)) without building the list."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise ValueError("message content must be a string or a list of content parts")


def chat_token_ids(
    messages: Sequence[Any], add_generation_prompt: bool = True, vocab: int = 128000
) -> list[int]:
    """Ids of a Llama-3-style chat template applied to `messages`."""
    ids = [BOS]
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError("each message must be an object with a 'role'")
        role = str(m["role"])
        ids += [START_HEADER, _ROLE_IDS.get(role, 1), END_HEADER, NEWLINES]
        ids += text_token_ids(_content_text(m.get("content")), vocab)
        ids.append(EOT)
    if add_generation_prompt:
        ids += [START_HEADER, ASSISTANT, END_HEADER, NEWLINES]
    return ids


def count_chat_tokens(messages: Sequence[Any], add_generation_prompt: bool = True) -> int:
    """len(chat_token_ids(...)) without hashing: 1 + (5 + content) per message + 4."""
    n = 1
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError("each message must be an object with a 'role'")
        n += 5 + count_text_tokens(_content_text(m.get("content")))
    return n + (4 if add_generation_prompt else 0)
