"""Conversations: turn k+1 is sent when turn k has finished, plus a think time.

A conversation resends its whole history each turn: every earlier user message and the
assistant's *actual* output (kept by `RichStream` for the turns a later turn needs, as the
escaped JSON text it arrived in). With the chat API the history is a list of messages; with
the completions API it is concatenated into one text prompt (user and assistant texts joined
by a blank line, no chat template).

The arrival schedule (or the closed loop) starts conversations: with `--turns`,
`--request-rate`, `--concurrency` and `--num-requests` count conversations, and the turns
after the first are sent from here, each `think time` after its predecessor's end (that is
its intended send time, so any lateness shows as send slip). A failed turn ends its
conversation. A stop by count lets every started conversation finish; any other stop drops
the turns not yet sent.

This runs inside the load process: a few dict and list operations per request, no JSON
decoding.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmtop.backends.http import Exchange
from llmtop.backends.prompts import json_text
from llmtop.backends.richstream import RichStream
from llmtop.metrics import records

if TYPE_CHECKING:
    from llmtop.load.driver import LoadDriver

NS_PER_S = 1_000_000_000
THINK_ALLOWED = "seconds >= 0, exp:MEAN or uniform:LOW:HIGH"
COUNT_STOP = "all requests sent"  # the driver's reason when --num-requests is reached
_SEP = b"\\n\\n"  # a blank line, inside a JSON string


@dataclass(frozen=True)
class ThinkTime:
    """Seconds between a turn's end and the next turn's send: fixed, exponential or uniform."""

    kind: str  # "fixed", "exp" or "uniform"
    a: float = 0.0  # fixed: the value; exp: the mean; uniform: the low end
    b: float = 0.0  # uniform: the high end

    @classmethod
    def parse(cls, text: str | float) -> ThinkTime:
        """`2`, `0.5`, `exp:2` or `uniform:1:3` (seconds); ValueError naming what is allowed."""
        raw = str(text).strip().lower()
        parts = raw.split(":")
        try:
            nums = [float(p) for p in parts[1:]] if len(parts) > 1 else [float(parts[0])]
        except ValueError:
            raise ValueError(f"think time {text!r}: expected {THINK_ALLOWED}") from None
        if any(not math.isfinite(n) or n < 0 for n in nums):
            raise ValueError(f"think time {text!r}: seconds must be finite and >= 0")
        if len(parts) == 1:
            return cls("fixed", nums[0])
        if parts[0] == "exp" and len(nums) == 1:
            return cls("exp", nums[0])
        if parts[0] == "uniform" and len(nums) == 2:
            if nums[1] < nums[0]:
                raise ValueError(f"think time {text!r}: uniform:LOW:HIGH needs LOW <= HIGH")
            return cls("uniform", nums[0], nums[1])
        raise ValueError(f"think time {text!r}: expected {THINK_ALLOWED}")

    def draw_ns(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            s = self.a
        elif self.kind == "exp":
            s = rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        else:
            s = rng.uniform(self.a, self.b)
        return round(s * NS_PER_S)

    @property
    def mean_s(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a


class Conversation:
    """One conversation's state: its turns, where it stands, and the history so far."""

    __slots__ = ("history", "measured", "n_turns", "turn", "user")

    def __init__(self, user: list[tuple[bytes, int]], measured: bool) -> None:
        self.user = user  # (escaped user text, output tokens) per turn
        self.n_turns = len(user)
        self.turn = 1  # the turn being sent or in flight (1-based)
        self.measured = measured
        self.history: list[bytes] = []  # chat: message objects; completions: texts


class Conversations:
    """The driver's conversation engine: starts conversations and sends their later turns."""

    def __init__(self, driver: LoadDriver) -> None:
        cfg = driver.cfg
        wl = cfg.workload
        self.driver = driver
        self.factory: Any = driver.factory
        self.chat = cfg.target.api == "chat"
        self.turns = wl.turns
        self.think = ThinkTime.parse(wl.think_time)
        self.rng = random.Random(wl.seed ^ 0x7A1C)
        self.reasoning = cfg.dialect.reasoning
        # turn numbers go into records only for conversational workloads
        self.tag = wl.turns != 1 or bool(cfg.conversations)
        self.dataset = [
            [(json_text(text), out) for text, out in conv] for conv in cfg.conversations
        ]
        self.by_ex: dict[Exchange, Conversation] = {}
        self.active = 0  # conversations started and not over (the closed loop's count)
        self.timers: dict[Conversation, Any] = {}  # in think time: their next turn's timer
        self.waiting: deque[tuple[int, Conversation]] = deque()  # due, waiting for a slot
        self.started = 0
        self.go_on = True  # False once a stop drops the turns not yet sent

    @staticmethod
    def wanted(driver: LoadDriver) -> bool:
        """Whether this run needs conversations (or the reasoning-aware parser)."""
        cfg = driver.cfg
        return (
            cfg.target.api != "triton"
            and not cfg.trace
            and (cfg.workload.turns != 1 or bool(cfg.conversations) or cfg.dialect.reasoning)
        )

    @property
    def pending(self) -> int:
        """Later turns not sent yet (in think time, or due and waiting for a slot)."""
        return len(self.timers) + len(self.waiting)

    # -- the turns ----------------------------------------------------------------------
    def _new(self, measured: bool) -> Conversation:
        take = getattr(self.factory, "take_index", None)  # a worker of a group: the global index
        i = take(max(self.turns, 1)) if take is not None else self.started
        self.started += 1
        if self.dataset:
            src = self.dataset[i % len(self.dataset)]
            if self.turns > 0:
                src = src[: self.turns]
            user = [(text, out or self.factory.out_len()) for text, out in src]
        else:
            first = self.factory.user_text()
            user = [first] + [self.factory.user_text(first=False) for _ in range(self.turns - 1)]
        return Conversation(user, measured)

    def _body(self, conv: Conversation) -> bytes:
        text, out_len = conv.user[conv.turn - 1]
        if self.chat:
            msgs = [*conv.history, b'{"role":"user","content":"' + text + b'"}']
            return b'{"messages":[' + b",".join(msgs) + b"]," + self.factory.rest(out_len)
        prompt = _SEP.join([*conv.history, text])
        return b'{"prompt":"' + prompt + b'",' + self.factory.rest(out_len)

    def _submit(self, conv: Conversation, intended_ns: int, slot_ns: int) -> None:
        d = self.driver
        ex = Exchange(intended_ns, slot_ns, conv.measured)
        keep = conv.turn < conv.n_turns
        if keep or self.reasoning:
            ex.stream = RichStream(keep_text=keep, chat=self.chat)
        self.by_ex[ex] = conv
        d.in_flight.add(ex)
        d.sent += 1
        d.pool.submit(ex, self.factory.wrap(self._body(conv)))

    def start(self, intended_ns: int, slot_ns: int, measured: bool) -> None:
        """A new conversation: its first turn goes now (called where a request would go)."""
        conv = self._new(measured)
        self.active += 1
        self._submit(conv, intended_ns, slot_ns)

    def _due(self, conv: Conversation, intended_ns: int) -> None:
        self.timers.pop(conv, None)
        if not self.go_on:
            return
        d = self.driver
        if d.cap and len(d.in_flight) >= d.cap:
            self.waiting.append((intended_ns, conv))
        else:
            self._submit(conv, intended_ns, intended_ns)

    def finished(self, ex: Exchange, rec: records.RequestRecord) -> records.RequestRecord:
        """A request ended: tag its record; schedule the conversation's next turn, or end it.

        Called by the driver after the exchange left `in_flight` and before any queued
        request takes its slot, so a later turn that was waiting for the slot goes first.
        """
        conv = self.by_ex.pop(ex, None)
        if conv is None:
            return rec
        st = ex.stream
        if isinstance(st, RichStream):
            rec = rec._replace(
                turn=conv.turn if self.tag else 0,
                reasoning_tokens=st.reasoning_tokens,
                reasoning_first_ns=st.reasoning_first_ns,
                answer_first_ns=st.answer_first_ns if st.reasoning_first_ns else 0,
            )
        elif self.tag:
            rec = rec._replace(turn=conv.turn)
        if rec.error is None and conv.turn < conv.n_turns and self.go_on:
            text, _ = conv.user[conv.turn - 1]
            answer = st.text_json() if isinstance(st, RichStream) else b""
            if self.chat:
                conv.history.append(b'{"role":"user","content":"' + text + b'"}')
                conv.history.append(b'{"role":"assistant","content":"' + answer + b'"}')
            else:
                conv.history += [text, answer]
            conv.turn += 1
            intended = rec.end_ns + self.think.draw_ns(self.rng)
            delay_s = max(intended - time.perf_counter_ns(), 0) / NS_PER_S
            self.timers[conv] = self.driver.loop.call_later(delay_s, self._due, conv, intended)
        else:
            self.active -= 1
        d = self.driver
        if self.waiting and (not d.cap or len(d.in_flight) < d.cap):
            intended, waiting = self.waiting.popleft()
            self._submit(waiting, intended, time.perf_counter_ns())
        return rec

    def stop(self, reason: str, cancel_in_flight: bool) -> None:
        """A stop by count lets started conversations finish; any other drops later turns."""
        if reason == COUNT_STOP and not cancel_in_flight:
            return
        self.go_on = False
        for handle in self.timers.values():
            handle.cancel()
        self.active -= len(self.timers) + len(self.waiting)
        self.timers.clear()
        self.waiting.clear()
