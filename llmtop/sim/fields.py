"""Request bodies as the engines read them: parsing, field lists, validation.

vLLM ignores unknown fields; trtllm-serve's pydantic request models forbid them
(`extra="forbid"`), so the trtllm flavour answers those with a 400, as it does.
Everything here is pure: a body in, numbers or an `ApiError` out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmtop.sim.http import ApiError
from llmtop.sim.tokens import (
    BOS,
    chat_token_ids,
    count_chat_tokens,
    count_text_tokens,
    text_token_ids,
)

# trtllm-serve's request models forbid unknown fields (pydantic extra="forbid").
TRT_COMMON = frozenset(
    {
        "model",
        "best_of",
        "echo",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "n",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "user",
        "lora_request",
        "use_beam_search",
        "top_k",
        "top_p_min",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "early_stopping",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "add_special_tokens",
        "response_format",
        "disaggregated_params",
        "priority",
        "detokenize",
        "return_context_logits",
        "prompt_ignore_length",
        "thinking_token_budget",
        "conversation_params",
    }
)
TRT_COMPLETION_FIELDS = TRT_COMMON | {"prompt", "suffix"}
TRT_CHAT_FIELDS = TRT_COMMON | {
    "messages",
    "top_logprobs",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "add_generation_prompt",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "reasoning_effort",
    "mm_processor_kwargs",
    "cache_salt",
}
STREAM_OPTION_FIELDS = frozenset({"include_usage", "continuous_usage_stats"})


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or a 400."""
    try:
        obj = json.loads(body or b"null")
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"invalid JSON body: {e}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "request body must be a JSON object")
    return obj


def check_trt_fields(req: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
    """trtllm-serve's pydantic validation: unknown fields, a missing model, stream_options."""
    extra = sorted(set(req) - allowed)
    if extra:
        raise ApiError(
            400,
            "; ".join(f"1 validation error: {k}: Extra inputs are not permitted" for k in extra),
        )
    if "model" not in req:
        raise ApiError(400, "1 validation error: model: Field required")
    so = req.get("stream_options")
    if so and not req.get("stream"):
        raise ApiError(400, "Stream options can only be defined when stream is true.")
    if isinstance(so, dict) and set(so) - STREAM_OPTION_FIELDS:
        raise ApiError(400, "stream_options: Extra inputs are not permitted")


def check_model(req: dict[str, Any], served: str) -> None:
    model = req.get("model")
    if model is not None and model != served:
        raise ApiError(404, f"The model `{model}` does not exist. Valid: {served}", "NotFoundError")


def completion_prompt_ids(req: dict[str, Any], vocab: int) -> list[int]:
    """Token ids of a completions prompt: text (with BOS, as engines add), ids, or a batch of 1."""
    prompt = req.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        ids = [BOS, *text_token_ids(prompt, vocab)]
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        ids = prompt
    else:
        raise ApiError(
            400,
            "prompt must be a string, a list of token ids, or a batch "
            "of one of those (the simulator takes one prompt per request)",
        )
    if not ids:
        raise ApiError(400, "prompt must not be empty")
    return ids


def completion_prompt_len(req: dict[str, Any]) -> int:
    """len(completion_prompt_ids(...)) without hashing text."""
    prompt = req.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return 1 + count_text_tokens(prompt)
    return len(completion_prompt_ids(req, 1))


def chat_prompt_ids(req: dict[str, Any], vocab: int) -> list[int]:
    """Token ids of the chat template applied to `messages`."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    try:
        return chat_token_ids(messages, bool(req.get("add_generation_prompt", True)), vocab)
    except ValueError as e:
        raise ApiError(400, str(e)) from None


def tokenize_ids(req: dict[str, Any], vocab: int) -> list[int]:
    """What `/tokenize` answers: the same ids the engine bills and caches."""
    try:
        if "messages" in req:
            return chat_token_ids(
                req["messages"], bool(req.get("add_generation_prompt", True)), vocab
            )
        if isinstance(req.get("prompt"), str):
            special = [BOS] if req.get("add_special_tokens", True) else []
            return special + text_token_ids(req["prompt"], vocab)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    raise ApiError(400, "tokenize needs 'prompt' (string) or 'messages'")


def count_chat(req: dict[str, Any]) -> int:
    """len(chat_prompt_ids(...)) without hashing (for flavours that do not cache)."""
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list")
    try:
        return count_chat_tokens(messages, bool(req.get("add_generation_prompt", True)))
    except ValueError as e:
        raise ApiError(400, str(e)) from None


@dataclass(frozen=True, slots=True)
class Limits:
    """Generation settings of one request after validation."""

    max_tokens: int
    min_tokens: int
    stream: bool
    include_usage: bool
    continuous: bool
    ignore_eos: bool


def generation_limits(
    req: dict[str, Any], prompt_len: int, max_model_len: int, default_max: int | None
) -> Limits:
    """max_tokens, min_tokens and stream options, checked as vLLM checks them."""
    if req.get("n", 1) not in (1, None):
        raise ApiError(400, "the simulator supports n=1 only")
    max_tokens = req.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max if default_max is not None else max_model_len - prompt_len
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
    if prompt_len + max_tokens > max_model_len:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the messages, "
            f"{max_tokens} in the completion). Please reduce the length of the messages "
            f"or completion.",
        )
    min_tokens = req.get("min_tokens") or 0
    if not isinstance(min_tokens, int) or min_tokens < 0 or min_tokens > max_tokens:
        raise ApiError(400, f"min_tokens must be in [0, max_tokens], got {min_tokens!r}")
    stream = bool(req.get("stream"))
    so = req.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise ApiError(400, "stream_options must be an object")
    if so and not stream:
        raise ApiError(400, "Stream options can only be defined when stream is true.")
    return Limits(
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        stream=stream,
        include_usage=bool(so and so.get("include_usage")),
        continuous=bool(so and so.get("continuous_usage_stats")),
        ignore_eos=bool(req.get("ignore_eos")),
    )
