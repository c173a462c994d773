"""Text prompts of exact token length, sized with the server's own tokenizer (/tokenize).

Runs once in the parent before the load (nothing here is timed). A text prompt is
`compose_text(group prefix, unique start, body)` (`llmtop.backends.prompts`):

- the group prefixes are texts of exactly `prefix_len` tokens, so every prompt of a group
  opens with the same tokens;
- the unique start is a few words drawn per request from a pool of words the server's
  tokenizer reads as one token each, all of one length in characters — so every draw has the
  same token count (under BPE, where words split at spaces, and under a count by characters,
  as the simulator's) and no two prompts share a cache block beyond their prefix;
- the body is sized against that whole composition, so the total is `input_len`.

The tokenizer is reached through a `count(text) -> tokens | None` coroutine, so this module
speaks no HTTP itself and is tested with any counting function.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from llmtop.backends.prompts import UNIQUE_START_TOKENS, compose_text

Count = Callable[[str], Awaitable[int | None]]

MIN_WORDS = 8  # fewer one-token words than this: no unique starts (texts go whole)
BODIES = 8  # distinct bodies to cycle through when unique starts keep prompts apart
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "po", "an", "el", "or", "ti")
# Common short English words: one token each in most real vocabularies.
_COMMON_TEXT = (
    "the and for are but not you all any can had her was one our out day get has him his how "
    "man new now old see two way who boy did its let put say she too use time load test rate "
    "that with have this will your from they know want been good much some very when come here "
    "just like long make many more only over such take than them well were what year back call "
    "down each find give hand high keep last life most move name need next open part play read "
    "room seem show side tell turn walk work word area book case city door face fact game head "
    "home idea kind line lot mind week eyes road unit view wall"
)


def words(rng: random.Random, n: int) -> list[str]:
    """`n` made-up words of one to three syllables (filler for bodies)."""
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]


async def one_token_words(count: Count) -> tuple[str, ...]:
    """Words the tokenizer reads as one token after a space, all of one length in characters.

    Candidates are short English words and the filler syllables; of those that count one
    token, the largest set of one length wins. Fewer than `MIN_WORDS`: none (the caller then
    sends whole texts and says so).
    """
    candidates = sorted(set(_COMMON_TEXT.split()) | set(_SYLLABLES))
    counts = await asyncio.gather(*(count(" " + w) for w in candidates))
    by_len: dict[int, list[str]] = {}
    for w, c in zip(candidates, counts, strict=True):
        if c == 1:
            by_len.setdefault(len(w), []).append(w)
    best = max(by_len.values(), key=len, default=[])
    return tuple(best) if len(best) >= MIN_WORDS else ()


async def sized(
    count: Count, n_tokens: int, make: Callable[[list[str]], str], rng: random.Random
) -> tuple[str, int | None]:
    """`make(ws)` for filler words `ws` chosen so that it counts `n_tokens` tokens.

    Scales the word list by the ratio while far off, then walks a word at a time. Returns the
    text and its count (None when the server could not count it).
    """
    ws = words(rng, max(n_tokens, 1))
    got = await count(make(ws))
    if got is None:
        return make(ws[: max(1, round(n_tokens / 1.3))]), None
    for _ in range(16):
        if got == n_tokens:
            break
        if abs(got - n_tokens) > 3:
            keep = max(0, round(len(ws) * n_tokens / max(got, 1)))
            ws = ws[:keep] if keep < len(ws) else ws + words(rng, keep - len(ws))
        elif got > n_tokens:
            if not ws:
                break
            ws = ws[:-1]
        else:
            ws = ws + words(rng, 1)
        new = await count(make(ws))
        if new is None:
            break
        got = new
    return make(ws), got


@dataclass(frozen=True)
class TextPieces:
    """What the request factory composes text prompts from."""

    bodies: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


async def text_pieces(
    count: Count, input_len: int, prefix_groups: int, prefix_len: int, seed: int, pool: int
) -> TextPieces:
    """Prefixes, a one-token word pool and bodies so that each prompt counts `input_len`.

    `pool` is how many distinct bodies to make when there are no unique starts (the old
    behaviour: a pool of whole texts); with unique starts `BODIES` suffice.
    """
    rng = random.Random(seed)
    notes: list[str] = []
    n_groups = prefix_groups if prefix_len > 0 else 0
    plen = min(prefix_len, input_len) if n_groups else 0
    prefixes: list[str] = []
    for _ in range(n_groups):
        text, got = await sized(count, plen, " ".join, rng)
        prefixes.append(text)
        if got is not None and got != plen:
            notes.append(f"a prefix-group text counts {got} tokens, not {plen}")
    pool_words = await one_token_words(count)
    u = min(UNIQUE_START_TOKENS, input_len - plen) if pool_words else 0
    sample = [pool_words[i % len(pool_words)] for i in range(u)] if u else []
    head = prefixes[0] if prefixes else ""
    left = input_len - plen - u
    bodies: list[str] = []
    misses: list[int] = []
    for _ in range(BODIES if u else pool):
        if left <= 0:
            bodies.append("")
            continue
        body, got = await sized(
            count, input_len, lambda ws: compose_text(head, sample, " ".join(ws)), rng
        )
        body = body[len(compose_text(head, sample, "")) :].lstrip(" ")
        bodies.append(body)
        if got is None:
            notes.append("the server has no /tokenize: text prompt lengths are approximate")
            return TextPieces(tuple(bodies), tuple(prefixes), (), tuple(notes))
        if got != input_len:
            misses.append(got)
    if misses:
        mean = sum(misses) / len(misses)
        notes.append(
            f"{len(misses)} of {len(bodies)} text prompts missed {input_len} tokens"
            f" (mean {mean:.1f}); usage reports the real count"
        )
    if not pool_words:
        notes.append(
            "the server's tokenizer gave too few one-token words for unique starts: "
            f"text prompts repeat every {len(bodies)} requests (prefix-cache hits)"
        )
    elif u:  # check a few real draws (other groups, other words) against the server
        checks = [
            compose_text(rng.choice(prefixes) if prefixes else "", rng.sample(pool_words, u), b)
            for b in bodies[:3]
        ]
        got_all = await asyncio.gather(*(count(t) for t in checks))
        off = [g for g in got_all if g is not None and g != input_len]
        if off:
            notes.append(
                f"text prompts with other unique starts counted {off} tokens, not {input_len}"
            )
    return TextPieces(tuple(bodies), tuple(prefixes), pool_words, tuple(notes))
