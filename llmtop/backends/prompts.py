"""Prompt pieces for production-like workloads: shared prefixes, unique starts, trace blocks.

Pure and deterministic (seeded), so the parent, the load process and the tests build the same
prompts. What a prefix cache sees is decided here:

- a *prefix group* is `prefix_len` identical tokens at the start of every prompt of the group;
- right after it comes a short *unique start* (random token ids, or one-token words for text
  prompts), so two prompts never share a cache block beyond their group's prefix;
- a *trace block* is the 512 tokens one Mooncake hash id stands for: the same id gives the same
  tokens in every request, so requests share exactly the blocks the trace says they share.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import numpy as np

from llmtop.config import TraceRow

UNIQUE_START_TOKENS = 4  # random tokens after any shared prefix: no cache hit beyond it
TRACE_BLOCK_TOKENS = 512
_GROUP_SALT = 0x5EED_6A0F  # keeps group prefixes apart from the per-request random ids
_BLOCK_SALT = 0x7ACE_B10C


def json_text(text: str) -> bytes:
    """`text` as the inside of a JSON string (escaped, without the quotes)."""
    return json.dumps(text, ensure_ascii=False)[1:-1].encode()


def group_prefix_ids(seed: int, group: int, length: int, lo: int, hi: int) -> list[int]:
    """The token ids group `group` opens every prompt with (the same in every process)."""
    rng = random.Random(f"{seed}:{group}:{_GROUP_SALT}")
    return [rng.randrange(lo, hi) for _ in range(length)]


def block_ids(block_id: int, lo: int, hi: int, seed: int = 0) -> np.ndarray:
    """The 512 token ids a trace hash id stands for."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, _BLOCK_SALT, block_id & 0xFFFFFFFFFFFF])
    return rng.integers(lo, hi, TRACE_BLOCK_TOKENS)


def compose_text(prefix: str, unique: Sequence[str], body: str) -> str:
    """A text prompt: group prefix, unique start, body, joined by single spaces.

    The request factory sends exactly this (as three pre-escaped pieces), and the preflight
    sizes the body against this composition with the server's own /tokenize.
    """
    return " ".join(part for part in (prefix, " ".join(unique), body) if part)


class TracePrompts:
    """Token-id prompt bytes for trace rows: each hash id's block, then unique filler.

    A row with input length N and k hash ids gets the blocks' tokens in order, cut at N; a row
    whose blocks cover fewer than N tokens is filled up with fresh random ids (a part no other
    request shares). Block texts are made once per distinct id, when first needed.
    """

    def __init__(self, lo: int, hi: int, seed: int = 0) -> None:
        self._lo, self._hi, self._seed = lo, hi, seed
        self._blocks: dict[int, list[bytes]] = {}
        self._rng = random.Random(seed)

    def _block(self, block_id: int) -> list[bytes]:
        b = self._blocks.get(block_id)
        if b is None:
            b = self._blocks[block_id] = [
                str(t).encode() for t in block_ids(block_id, self._lo, self._hi, self._seed)
            ]
        return b

    def token_ids(self, row: TraceRow) -> bytes:
        """The row's prompt as comma-separated ids (without brackets)."""
        _, n_in, _, hash_ids = row
        parts: list[bytes] = []
        left = n_in
        for h in hash_ids:
            if left <= 0:
                break
            block = self._block(h)
            take = min(left, TRACE_BLOCK_TOKENS)
            parts.extend(block[:take])
            left -= take
        if left > 0:
            rng, lo, hi = self._rng, self._lo, self._hi
            parts.extend(str(rng.randrange(lo, hi)).encode() for _ in range(left))
        return b",".join(parts)
