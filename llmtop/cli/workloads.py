"""The flags of production-like workloads (docs/workloads.md) and their checks.

Conversations (`--turns`, `--think-time`), prefix groups (`--prefix-groups`, `--prefix-len`),
trace replay (`--trace`, `--trace-speed`), the prompt format of completions
(`--prompt-format`) and cache resets (`--reset-prefix-cache`). `RunOptions` (in
`llmtop.cli.options`) carries the values; the checks against the other flags are here, called
from `RunOptions.from_params`, so every command rejects the same conflicts in the same words.
"""

from __future__ import annotations

from typing import Any

import click

from llmtop.errors import ConfigError
from llmtop.load.conversations import ThinkTime

PREFIX_BLOCK = 16  # vLLM's KV block: a prefix that ends mid-block cannot be cached whole
# What `--prompt-format` defaults to, and why: benchmarks/prompt_format.py measured both on a
# real vLLM (CPU build) under load: TTFT p50/p99 and the knee the same within the machine's
# noise, the API server's CPU +1.4-3 ms a request with text; token ids stay exact on every
# server that takes them (text only with /tokenize). Figures: docs/workloads.md.
DEFAULT_PROMPT_FORMAT = "tokens"


class TurnsType(click.ParamType):
    """Requests per conversation: a whole number >= 1, or `all` (every turn of a dataset)."""

    name = "N|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return 0
        try:
            n = int(text)
        except ValueError:
            self.fail(f"{value!r}: expected a whole number >= 1 or 'all'", param, ctx)
        if n < 1:
            self.fail(f"{value!r}: a conversation has at least 1 turn", param, ctx)
        return n


class ThinkType(click.ParamType):
    name = "S|exp:MEAN|uniform:LO:HI"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        try:
            ThinkTime.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return str(value).strip().lower()


WORKLOAD_FLAGS = [
    click.option(
        "--turns",
        type=TurnsType(),
        default="1",
        show_default=True,
        help="Requests per conversation, each resending the whole history (the model's own "
        "answers included); 'all' = every turn of each --dataset conversation. With it, "
        "--request-rate, --concurrency and --num-requests count conversations.",
    ),
    click.option(
        "--think-time",
        type=ThinkType(),
        default="0",
        show_default=True,
        help="Seconds from a turn's end to the next turn: S, exp:MEAN or uniform:LO:HI.",
    ),
    click.option(
        "--prefix-groups",
        type=int,
        default=0,
        show_default=True,
        help="Prompts fall in G groups (request i in group i mod G) whose first "
        "--prefix-len tokens are identical; the rest is unique.",
    ),
    click.option(
        "--prefix-len",
        type=int,
        default=0,
        show_default=True,
        help=f"Tokens each prefix group shares (a multiple of {PREFIX_BLOCK}, the KV block).",
    ),
    click.option(
        "--prompt-format",
        type=click.Choice(["tokens", "text"]),
        default=DEFAULT_PROMPT_FORMAT,
        show_default=True,
        help="Completions prompts as token ids (the server never tokenizes) or text sized "
        "exactly with the server's /tokenize (production-like: the server tokenizes).",
    ),
    click.option(
        "--trace",
        type=click.Path(dir_okay=False),
        help="Replay a Mooncake-format JSONL trace (timestamp ms, input_length, "
        "output_length, hash_ids of 512-token blocks) at its own times.",
    ),
    click.option(
        "--trace-speed",
        type=float,
        default=1.0,
        show_default=True,
        help="Replay the trace this many times faster (0.5 = half speed).",
    ),
    click.option(
        "--reset-prefix-cache",
        is_flag=True,
        default=False,
        help="Empty the engine's prefix cache before the run (vLLM /reset_prefix_cache, "
        "SGLang /flush_cache), each repeat and each sweep point.",
    ),
]


class _Plain:
    """Where no click context tells typed flags apart: set = differs from the default."""

    def __init__(self, o: Any) -> None:
        import dataclasses

        self.o = o
        self.defaults = {f.name: f.default for f in dataclasses.fields(o)}

    def set(self, name: str) -> bool:
        v = getattr(self.o, name, None)
        return v is not None and v != self.defaults.get(name)

    typed = set

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")


def check_workloads(o: Any, given: Any = None) -> list[str]:
    """Conflicts (one-line ConfigError naming the flags) and notes for flags made moot.

    `o` is the RunOptions being built, `given` tells typed flags from defaults (None: any
    value other than the default counts as given).
    """
    given = given if given is not None else _Plain(o)
    f = given.flag
    notes: list[str] = []
    if o.prefix_groups < 0 or o.prefix_len < 0:
        raise ConfigError("--prefix-groups and --prefix-len must be >= 0")
    if bool(o.prefix_groups) != bool(o.prefix_len):
        raise ConfigError("--prefix-groups and --prefix-len go together: give both (G and L)")
    if o.prefix_len % PREFIX_BLOCK:
        raise ConfigError(
            f"--prefix-len {o.prefix_len} is not a multiple of {PREFIX_BLOCK} tokens: a prefix "
            "that ends mid-block is never cached whole (give a block-aligned length)"
        )
    if o.prefix_groups and o.shared_prefix_len:
        raise ConfigError(
            f"{f('shared_prefix_len')} and --prefix-groups both set the shared prefix: give one"
        )
    if o.prefix_groups and not o.trace and not o.dataset:
        shortest = o.input_len if isinstance(o.input_len, int) else round(o.input_len.a)
        if o.prefix_len >= shortest:
            raise ConfigError(
                f"--prefix-len {o.prefix_len} leaves no room in {f('input_len')}: the prefix "
                "must be shorter than the prompt"
            )
    if not o.trace_speed > 0:
        raise ConfigError(f"--trace-speed must be > 0, got {o.trace_speed:g}")
    if o.turns == 0 and not o.dataset:
        raise ConfigError("--turns all needs a --dataset of conversations")
    if o.turns != 1 and o.api == "triton":
        raise ConfigError("--turns needs an OpenAI-style API (--api chat or completions)")
    if o.prefix_groups and o.dataset:
        raise ConfigError("--prefix-groups shapes synthetic prompts; --dataset brings its own")
    if o.prompt_format == "text" and o.api == "chat" and given.typed("prompt_format"):
        notes.append("--prompt-format ignored: --api chat always sends text")
    if o.turns != 1 and o.api == "completions":
        notes.append(
            "conversations over --api completions: the history is concatenated into one text "
            "prompt (user and assistant texts joined by a blank line, no chat template)"
        )
    if o.trace:
        _check_trace(o, given)
        for name in ("input_len", "output_len"):
            if given.typed(name):
                notes.append(f"{f(name)} ignored: lengths come from --trace")
    elif given.typed("trace_speed"):
        notes.append("--trace-speed ignored: no --trace")
    if given.typed("think_time") and o.turns == 1 and not o.trace:
        notes.append("--think-time ignored: requests are not conversations (no --turns)")
    return notes


def _check_trace(o: Any, given: Any) -> None:
    f = given.flag
    for name, why in (
        ("dataset", "prompts come from the trace"),
        ("concurrency", "the trace sets the arrivals (open loop)"),
        ("duration", "the trace is replayed whole (or --num-requests of it)"),
        ("warmup", "the trace is replayed whole, from its first request"),
    ):
        if given.set(name):
            raise ConfigError(f"--trace and {f(name)} do not go together: {why}")
    if given.typed("request_rate"):
        raise ConfigError("--trace sets its own rate: use --trace-speed to scale it")
    if o.turns != 1:
        raise ConfigError("--trace and --turns do not go together: a trace row is one request")
    if o.prefix_groups or o.shared_prefix_len:
        raise ConfigError("--trace and a shared prefix do not go together: hash_ids say it")
    if o.api != "completions":
        raise ConfigError("--trace sends token-id prompts of exact length: use --api completions")
    if o.prompt_format == "text":
        raise ConfigError(
            "--trace sends token-id prompts of exact length, not --prompt-format text"
        )


def load_workload_files(opts: Any, o: dict[str, Any]) -> dict[str, Any]:
    """Read the trace / the dataset's conversations once; fit the plan to a trace.

    A trace sets the request count (all its rows, or the first --num-requests) and the
    nominal rate the live UI scales (its mean rate times --trace-speed).
    """
    from llmtop.datasets import load_conversations
    from llmtop.load.trace import load_trace, mean_rate

    out: dict[str, Any] = {}
    if opts.trace:
        rows = load_trace(opts.trace)
        n = min(opts.num_requests or len(rows), len(rows))
        rows = rows[:n]
        o["num_requests"] = n
        o["request_rate"] = mean_rate(rows, opts.trace_speed)
        out["trace_rows"] = rows
    if opts.dataset and opts.turns != 1:
        out["conversations"] = load_conversations(opts.dataset, opts.dataset_format or "auto")
    return out


def workload_fields(opts: Any) -> dict[str, Any]:
    """The Workload fields these flags set."""
    return {
        "prefix_groups": opts.prefix_groups,
        "prefix_len": opts.prefix_len,
        "turns": opts.turns,
        "think_time": opts.think_time,
        "prompt_format": opts.prompt_format,
        "trace": str(opts.trace or ""),
        "trace_speed": opts.trace_speed,
        "reset_prefix_cache": opts.reset_prefix_cache,
    }
