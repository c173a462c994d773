"""A stream parser that also tells reasoning from answer, and keeps the answer's text.

Used only where it is needed (the plain `StreamState` stays the hot path's parser):
- reasoning models (the preflight saw `reasoning_content` — vLLM's reasoning parsers — or
  `reasoning` deltas): each token chunk is classed as reasoning or answer, for time to first
  reasoning token, time to first answer token and the two token counts;
- conversation turns that a later turn will resend: the assistant's actual output is kept,
  as the escaped JSON text it arrived in (`text_json()`), so building the next request costs
  a join and no JSON decoding or re-encoding.

It works on top of the base parser: after the base has taken an event, a chunk that carried
tokens (the base appended a stamp) is scanned once more for its delta's fields.
"""

from __future__ import annotations

from llmtop.backends.sse import StreamState

_REASONING = (b'"reasoning_content":"', b'"reasoning":"')
_CONTENT = b'"content":"'
_TEXT = b'"text":"'


def string_end(body: bytes, i: int, e: int) -> int:
    """Index of the quote closing the JSON string that starts at `i` (-1 if not in body[:e])."""
    j = body.find(b'"', i, e)
    while j > 0:
        b = j - 1
        while body[b] == 92:  # backslashes before the quote: an odd count escapes it
            b -= 1
        if (j - 1 - b) % 2 == 0:
            return j
        j = body.find(b'"', j + 1, e)
    return -1


def _nonempty(body: bytes, keys: tuple[bytes, ...] | bytes, s: int, e: int) -> int:
    """Where a non-empty string field's text starts (after its opening quote), else -1."""
    for key in (keys,) if isinstance(keys, bytes) else keys:
        i = body.find(key, s, e)
        if i >= 0:
            i += len(key)
            if i < e and body[i] != 34:
                return i
    return -1


class RichStream(StreamState):
    """`StreamState` plus reasoning/answer accounting and, when asked, the answer's text."""

    __slots__ = (
        "answer_first_ns",
        "answer_key",
        "answer_tokens",
        "keep_text",
        "last_kind",
        "reasoning_first_ns",
        "reasoning_tokens",
        "text",
    )

    def __init__(self, keep_text: bool = False, chat: bool = True) -> None:
        super().__init__()
        self.keep_text = keep_text
        self.answer_key = _CONTENT if chat else _TEXT
        self.text: list[bytes] = []
        self.reasoning_tokens = 0
        self.answer_tokens = 0
        self.reasoning_first_ns = 0
        self.answer_first_ns = 0
        self.last_kind = 0  # 1 reasoning, 2 answer: what a chunk with no text continues

    def _event(self, body: bytes, s: int, e: int, t_ns: int) -> None:
        n = len(self.chunk_ns)
        super()._event(body, s, e, t_ns)
        if len(self.chunk_ns) == n:
            return
        k = self.chunk_tokens[-1]
        a = _nonempty(body, self.answer_key, s, e)
        if a >= 0:
            if self.keep_text:
                end = string_end(body, a, e)
                if end > a:
                    self.text.append(body[a:end])
            self._answer(k, t_ns)
        elif _nonempty(body, _REASONING, s, e) >= 0:
            self.reasoning_tokens += k
            self.last_kind = 1
            if not self.reasoning_first_ns:
                self.reasoning_first_ns = t_ns
        elif self.last_kind == 1:  # a token whose text is held back (a partial character)
            self.reasoning_tokens += k
        else:
            self._answer(k, t_ns)

    def _answer(self, k: int, t_ns: int) -> None:
        self.answer_tokens += k
        self.last_kind = 2
        if not self.answer_first_ns:
            self.answer_first_ns = t_ns

    def text_json(self) -> bytes:
        """The answer as the inside of a JSON string (escaped as the server sent it)."""
        return b"".join(self.text)
