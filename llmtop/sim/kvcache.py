"""KV-cache blocks with prefix caching, as vLLM V1's block pool does it.

Every full block of a sequence gets a hash chained from the block before it and the block's
token ids, so two sequences share a block's hash only when they share every token up to
its end. A full, computed block is entered in the cache under its hash; when its last user
lets go of it, it goes to the free queue but keeps its contents until it is evicted, so a
later request with the same prefix can take it back ("touch") instead of computing it.
The free queue is least-recently-freed first, and a finished request's blocks are queued
tail first, so the ends of sequences are evicted before the prefixes others share.

Pure: no clock. `num_free` counts evictable cached blocks as free, which is what vLLM
reports as `kv_cache_usage_perc` (1 - free / total).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

ROOT_HASH = 0x6C6C6D746F70  # parent of a sequence's first block ("llmtop")


def block_hashes(token_ids: Sequence[int], block_size: int, parent: int = ROOT_HASH) -> list[int]:
    """Chained hashes of every full block of `token_ids` (a partial last block has none)."""
    out: list[int] = []
    h = parent
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        h = hash((h, *token_ids[start : start + block_size]))
        out.append(h)
    return out


class KvBlocks:
    """A pool of `num_blocks` KV blocks: reference counts, LRU free queue, hash → block."""

    __slots__ = ("cached", "caching", "free", "hash_of", "ref", "total")

    def __init__(self, num_blocks: int, caching: bool) -> None:
        self.total = num_blocks
        self.caching = caching
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}

    @property
    def num_free(self) -> int:
        return len(self.free)

    def lookup(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Blocks of the longest cached prefix among the first `max_blocks` hashes."""
        hit: list[int] = []
        if not self.caching:
            return hit
        cached = self.cached
        for h in hashes[:max_blocks]:
            b = cached.get(h)
            if b is None:
                break
            hit.append(b)
        return hit

    def evictable(self, blocks: Iterable[int]) -> int:
        """How many of `blocks` sit in the free queue (taking them uses up free blocks)."""
        ref = self.ref
        return sum(1 for b in blocks if ref[b] == 0)

    def touch(self, blocks: Iterable[int]) -> None:
        """Take cache hits: out of the free queue if nobody held them, one more user."""
        ref, free = self.ref, self.free
        for b in blocks:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        """`n` blocks from the head of the free queue, evicting what they cached."""
        out: list[int] = []
        free, ref, hash_of, cached = self.free, self.ref, self.hash_of, self.cached
        for _ in range(n):
            b, _ = free.popitem(last=False)
            h = hash_of[b]
            if h is not None:
                hash_of[b] = None
                if cached.get(h) == b:
                    del cached[h]
            ref[b] = 1
            out.append(b)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """One user fewer for each block; unused ones join the free queue, tail first."""
        ref, free = self.ref, self.free
        for b in reversed(blocks):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def cache_block(self, block: int, h: int) -> None:
        """Enter a full, computed block under its hash (the first block with a hash wins)."""
        if self.hash_of[block] is None and h not in self.cached:
            self.cached[h] = block
            self.hash_of[block] = h

    def reset(self) -> int:
        """Forget every cached block that nobody uses (vLLM's /reset_prefix_cache)."""
        n = 0
        for b in self.free:
            h = self.hash_of[b]
            if h is not None:
                self.hash_of[b] = None
                del self.cached[h]
                n += 1
        return n
