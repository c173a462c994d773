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


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_OFFSETS = np.arange(TRACE_BLOCK_TOKENS, dtype=np.uint64) * _GOLDEN


def block_ids(block_id: int, lo: int, hi: int, seed: int = 0) -> np.ndarray:
    """The 512 token ids a trace hash id stands for (splitmix64 of (seed, id, position)).

    Arithmetic, not a random generator per block: a few microseconds, the same everywhere.
    """
    base = np.uint64(((seed & 0xFFFF) << 48 ^ block_id * _BLOCK_SALT) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        x = _OFFSETS + base
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(hi - lo)).astype(np.int64) + lo


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
    request shares). Each block is encoded once, as its id text and where each id ends, so a
    request is a join of a few byte strings; `prepare` encodes the blocks of the rows ahead
    of time (up to a budget), so the load loop does not encode while it should be sending.
    """

    PREPARE_BUDGET_TOKENS = 32_000_000  # ≈ 250 MB of encoded blocks; beyond it, on first use

    def __init__(self, lo: int, hi: int, seed: int = 0) -> None:
        self._lo, self._hi, self._seed = lo, hi, seed
        self._blocks: dict[int, tuple[bytes, list[int]]] = {}
        self._rng = random.Random(seed)

    def prepare(self, rows: Sequence[TraceRow]) -> None:
        """Encode the blocks these rows name, in order, until the budget is spent."""
        left = self.PREPARE_BUDGET_TOKENS
        for _, n_in, _, hash_ids in rows:
            for h in hash_ids[: -(-n_in // TRACE_BLOCK_TOKENS)]:
                if h not in self._blocks:
                    if left <= 0:
                        return
                    self._block(h)
                    left -= TRACE_BLOCK_TOKENS

    def _block(self, block_id: int) -> tuple[bytes, list[int]]:
        b = self._blocks.get(block_id)
        if b is None:
            texts = [str(t) for t in block_ids(block_id, self._lo, self._hi, self._seed).tolist()]
            ends, pos = [], -1
            for t in texts:
                pos += len(t) + 1
                ends.append(pos)  # the comma after token i (or the end) is at ends[i]
            b = self._blocks[block_id] = (",".join(texts).encode(), ends)
        return b

    def token_ids(self, row: TraceRow) -> bytes:
        """The row's prompt as comma-separated ids (without brackets)."""
        _, n_in, _, hash_ids = row
        parts: list[bytes] = []
        left = n_in
        for h in hash_ids:
            if left <= 0:
                break
            text, ends = self._block(h)
            if left >= TRACE_BLOCK_TOKENS:
                parts.append(text)
                left -= TRACE_BLOCK_TOKENS
            else:
                parts.append(text[: ends[left - 1]])
                left = 0
        if left > 0:
            rng, lo, hi = self._rng, self._lo, self._hi
            parts.append(",".join([str(rng.randrange(lo, hi)) for _ in range(left)]).encode())
        return b",".join(parts)
