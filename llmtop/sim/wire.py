"""Response writers of the simulator: one SSE stream, or one whole JSON answer.

A sink is built once per request with its pre-encoded pieces; the engine loop calls
`token(req)` after every step that gave `req` a token, and a streamed chunk is then one
`transport.write` of bytes assembled here (no JSON encoder on the hot path).
"""

from __future__ import annotations

import json
from typing import Any

from llmtop.sim.http import Conn
from llmtop.sim.scheduler import FINISHED, SimRequest
from llmtop.sim.tokens import WORDS

WORD_BYTES = [w.encode() for w in WORDS]
NWORDS = len(WORDS)


class StreamSink:
    """Writes one request's SSE chunks; built once per request with pre-encoded pieces."""

    __slots__ = (
        "before_text",
        "chat",
        "conn",
        "continuous",
        "include_usage",
        "keep_alive",
        "prompt_len",
        "role_chunk",
        "tail",
        "tail_usage_fmt",
        "usage_chunk_head",
    )

    def __init__(
        self,
        conn: Conn,
        *,
        chat: bool,
        rid_str: str,
        created: int,
        model: str,
        prompt_len: int,
        include_usage: bool,
        continuous: bool,
        keep_alive: bool,
    ) -> None:
        self.conn = conn
        self.chat = chat
        self.prompt_len = prompt_len
        self.include_usage = include_usage
        self.continuous = continuous
        self.keep_alive = keep_alive
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = (
            f'data: {{"id":"{rid_str}","object":"{obj}","created":{created},'
            f'"model":{json.dumps(model)},"choices":['
        ).encode()
        self.usage_chunk_head = head
        if chat:
            self.before_text = head + b'{"index":0,"delta":{"content":"'
            # vLLM's chat chunks are dumped with exclude_unset: no usage key unless set.
            self.tail = b'"},"logprobs":null,"finish_reason":%s,"stop_reason":null}]'
            self.tail_usage_fmt = (
                b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n'
            )
            role = (
                head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                b'"logprobs":null,"finish_reason":null}]'
            )
            if continuous:
                role += (
                    b',"usage":{"prompt_tokens":%d,"total_tokens":%d,'
                    b'"completion_tokens":0}}\n\n' % (prompt_len, prompt_len)
                )
            else:
                role += b"}\n\n"
            self.role_chunk = role
        else:
            self.before_text = head + b'{"index":0,"text":"'
            # vLLM dumps completion chunks with exclude_unset=False: "usage":null appears.
            self.tail = b'","logprobs":null,"finish_reason":%s,"stop_reason":null}]'
            self.tail_usage_fmt = (
                b',"usage":{"prompt_tokens":%d,"total_tokens":%d,'
                b'"completion_tokens":%d,"prompt_tokens_details":null}}\n\n'
            )
            self.role_chunk = b""

    def _details(self, req: SimRequest) -> bytes:
        """vLLM's final usage: cached_tokens when some were; completions dump unset as null."""
        c = req.num_cached_tokens
        if c:
            return b',"prompt_tokens_details":{"cached_tokens":%d}' % c
        return b"" if self.chat else b',"prompt_tokens_details":null'

    def token(self, req: SimRequest) -> None:
        """Write the chunk for the token `req` just produced (and the ending if done)."""
        t = self.conn.transport
        if t is None or t.is_closing():
            return
        k = req.output_len
        done = req.state == FINISHED
        if done and req.eos and k >= req.stop_at:
            word = b""  # the EOS token itself is not detokenized into text
        else:
            word = WORD_BYTES[(req.rid * 7 + k - 1) % NWORDS]
        if done:
            tail = self.tail % (b'"stop"' if req.eos and k >= req.stop_at else b'"length"')
        else:
            tail = self.tail % b"null"
        if self.continuous:
            p = self.prompt_len
            tail += self.tail_usage_fmt % (p, p + k, k)
        elif self.chat:
            tail += b"}\n\n"
        else:
            tail += b',"usage":null}\n\n'
        payload = self.before_text + word + tail
        if k == 1 and self.chat:
            payload = self.role_chunk + payload
        if done:
            if self.include_usage:
                p = self.prompt_len
                u = (
                    b'],"usage":{"prompt_tokens":%d,"total_tokens":%d,'
                    b'"completion_tokens":%d%s}}\n\n' % (p, p + k, k, self._details(req))
                )
                payload += self.usage_chunk_head + u
            payload += b"data: [DONE]\n\n"
            t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
            self.conn.finish_response()
            if not self.keep_alive:
                t.close()
        else:
            t.write(b"%x\r\n%s\r\n" % (len(payload), payload))


class FullSink:
    """Collects nothing per token; answers the whole response when the request finishes."""

    __slots__ = (
        "chat",
        "conn",
        "created",
        "keep_alive",
        "model",
        "prompt_len",
        "rid_str",
    )

    def __init__(
        self,
        conn: Conn,
        *,
        chat: bool,
        rid_str: str,
        created: int,
        model: str,
        prompt_len: int,
        keep_alive: bool,
    ) -> None:
        self.conn = conn
        self.chat = chat
        self.rid_str = rid_str
        self.created = created
        self.model = model
        self.prompt_len = prompt_len
        self.keep_alive = keep_alive

    def token(self, req: SimRequest) -> None:
        if req.state != FINISHED:
            return
        k = req.output_len
        stop = req.eos and k >= req.stop_at
        n_text = k - 1 if stop else k
        text = "".join(WORDS[(req.rid * 7 + i) % NWORDS] for i in range(n_text))
        usage = {
            "prompt_tokens": self.prompt_len,
            "total_tokens": self.prompt_len + k,
            "completion_tokens": k,
            "prompt_tokens_details": (
                {"cached_tokens": req.num_cached_tokens} if req.num_cached_tokens else None
            ),
        }
        reason = "stop" if stop else "length"
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        self.conn.finish_response()
        self.conn.send_json(
            200,
            {
                "id": self.rid_str,
                "object": obj,
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": usage,
            },
            self.keep_alive,
        )
