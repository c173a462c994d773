"""Frozen run configuration, shared by the CLI, the load process and the reports.

Everything here is plain data (picklable, JSON-able) so it can cross into the spawned load
process and be written into the JSON output verbatim.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Api = Literal["completions", "chat", "triton"]
# One trace request: (timestamp ms, input tokens, output tokens, ids of its 512-token blocks).
TraceRow = tuple[float, int, int, tuple[int, ...]]


@dataclass(frozen=True)
class Target:
    """Where requests go and how they authenticate; `api_key` never leaves this object."""

    url: str
    api: Api = "completions"
    model: str = ""
    api_key: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    simulated: dict[str, Any] | None = None

    def auth_headers(self) -> dict[str, str]:
        """The extra headers and the bearer key, for every side request (the one place)."""
        h = dict(self.headers)
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def public(self) -> dict[str, Any]:
        """What may be written to files and screens: header values and the key are hidden."""
        return {
            "url": self.url,
            "api": self.api,
            "model": self.model,
            "api_key": "***" if self.api_key else None,
            "headers": {k: "***" for k, _ in self.headers},
            "simulated": self.simulated is not None,
            "sim": self.simulated,
        }


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token lengths: ("uniform", low, high) or ("normal", mean, stddev).

    Drawn per request by the request factory from a seeded pool, clamped to [1, high or
    mean + 4 sd]; `mean` is what the preflight sizes text prompts with.
    """

    kind: str  # "uniform" or "normal"
    a: float  # uniform: low; normal: mean
    b: float  # uniform: high; normal: stddev

    @property
    def mean(self) -> int:
        return max(1, round((self.a + self.b) / 2 if self.kind == "uniform" else self.a))

    def text(self) -> str:
        return f"{self.kind}:{self.a:g}:{self.b:g}"

    def draw(self, rng: Any) -> int:
        if self.kind == "uniform":
            return max(1, rng.randint(round(self.a), round(self.b)))
        return max(1, round(rng.gauss(self.a, self.b)))


@dataclass(frozen=True)
class Workload:
    """Synthetic prompts of exact token length (token-id prompts where the server takes them).

    `input_dist` / `output_dist` replace the fixed lengths per request when set;
    `shared_prefix_len` tokens open every synthetic prompt (prefix-cache workloads);
    `dataset` names the file `RunConfig.dataset` was read from (for the record only).
    """

    input_len: int = 128
    output_len: int = 128
    ignore_eos: bool = True
    seed: int = 0
    input_dist: LengthDist | None = None
    output_dist: LengthDist | None = None
    shared_prefix_len: int = 0
    dataset: str = ""
    # Production-like workloads (docs/workloads.md): G groups sharing their first L tokens,
    # conversations of `turns` requests (0: every turn of the dataset's conversations) with a
    # think time ("S", "exp:MEAN", "uniform:LO:HI" seconds), completions prompts as token ids
    # or text, a replayed trace (file name, for the record) and cache resets between runs.
    prefix_groups: int = 0
    prefix_len: int = 0
    turns: int = 1
    think_time: str = "0"
    prompt_format: str = "tokens"
    trace: str = ""
    trace_speed: float = 1.0
    reset_prefix_cache: bool = False


@dataclass(frozen=True)
class LoadPlan:
    """Open loop (a rate) or closed loop (a concurrency), and when to stop."""

    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    concurrency: int | None = None
    duration_s: float | None = None
    num_requests: int | None = None
    warmup_s: float = 0.0
    seed: int = 0
    # Scale-out (docs/scale.md): load processes on this machine, or Ray actors across the
    # cluster at `ray` ("auto", "host:port", "ray://..."); the load is split among them.
    workers: int = 1
    ray: str | None = None

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    def describe(self) -> str:
        """One line: the loop, the arrival process, any cap (what tables and JSON show)."""
        if self.closed_loop:
            return f"closed loop, {self.concurrency} concurrent"
        cap = f", max {self.max_concurrency} in flight" if self.max_concurrency else ""
        if math.isinf(self.request_rate):
            return f"open loop, all at once{cap}"
        shape = (
            "Poisson arrivals"
            if self.burstiness == 1.0
            else f"gamma arrivals, burstiness {self.burstiness:g}"
        )
        return f"open loop, {self.request_rate:g} req/s ({shape}){cap}"


@dataclass(frozen=True)
class Dialect:
    """What this server accepts, found by the preflight; the load process sends only this."""

    token_id_prompts: bool = True
    continuous_usage: bool = True
    include_usage: bool = True
    ignore_eos: bool = True
    token_vocab: tuple[int, int] = (100, 1000)
    reasoning: bool = False  # the stream carries reasoning_content / reasoning deltas


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 10.0
    request_s: float = 600.0
    read_s: float = 120.0


_FORMAT_WORDS = {
    "token ids": "token-id prompts",
    "text": "text prompts",
    "chat messages": "chat messages",
    "text_input (Triton)": "Triton text_input",
}


@dataclass(frozen=True)
class RunConfig:
    """Everything the load process needs; built once by the CLI."""

    target: Target
    workload: Workload = Workload()
    plan: LoadPlan = LoadPlan()
    dialect: Dialect = Dialect()
    timeouts: Timeouts = Timeouts()
    window_s: float = 10.0
    text_prompts: tuple[str, ...] = ()
    # Dataset prompts (text, output tokens; 0 = the workload's output length), sent in order.
    dataset: tuple[tuple[str, int], ...] = ()
    # Dataset conversations: each one's user turns as (text, output tokens; 0 = default).
    conversations: tuple[tuple[tuple[str, int], ...], ...] = ()
    trace: tuple[TraceRow, ...] = ()  # the trace replayed (`Workload.trace` names the file)
    prefix_texts: tuple[str, ...] = ()  # text prompts: one shared prefix per prefix group
    unique_words: tuple[str, ...] = ()  # text prompts: one-token words for a unique start

    @property
    def prompts_as(self) -> str:
        """What the prompts are on the wire: token ids, text, chat messages or Triton text."""
        api = self.target.api
        if api == "triton":
            return "text_input (Triton)"
        if api == "chat":
            return "chat messages"
        if self.dataset or not self.dialect.token_id_prompts:
            return "text"
        return "token ids"

    def workload_public(self) -> dict[str, Any]:
        """The workload as written to JSON: lengths only where they shape the prompts.

        With a dataset the prompts come from the file, so the synthetic input length and
        shared prefix are not recorded as if they had been used.
        """
        w = dataclasses.asdict(self.workload)
        for key in ("input_dist", "output_dist"):
            dist = getattr(self.workload, key)
            w[key] = dist.text() if dist else None
        if self.dataset:
            w["dataset_prompts"] = len(self.dataset)
            w["input_len"] = None
            w["input_dist"] = None
            w["shared_prefix_len"] = 0
        if self.conversations:
            w["dataset_conversations"] = len(self.conversations)
        if self.trace:
            w["trace_requests"] = len(self.trace)
        w["prompts_as"] = self.prompts_as
        w["text"] = self.describe_workload()
        return w

    def describe_workload(self) -> str:
        """One line: lengths or dataset, and the prompt format (what tables show)."""
        wl = self.workload
        out = wl.output_dist.text() if wl.output_dist else str(wl.output_len)
        if self.trace:  # lengths and arrival times come from the trace
            name = wl.trace.rsplit("/", 1)[-1] or "trace"
            text = f"trace {name} ({len(self.trace)} requests, speed {wl.trace_speed:g})"
        elif self.conversations:
            name = wl.dataset.rsplit("/", 1)[-1] or "dataset"
            text = f"dataset {name} ({len(self.conversations)} conversations)"
        elif self.dataset:
            name = wl.dataset.rsplit("/", 1)[-1] or "dataset"
            given = sum(1 for _, n in self.dataset if n)
            if given == len(self.dataset):
                outs = "output lengths from the file"
            elif given:
                outs = f"output lengths from the file, else {out}"
            else:
                outs = f"{out} out"
            text = f"dataset {name} ({len(self.dataset)} prompts), {outs}"
        else:
            inp = wl.input_dist.text() if wl.input_dist else str(wl.input_len)
            text = f"{inp} in / {out} out tokens"
            if wl.shared_prefix_len:
                text += f", shared prefix {wl.shared_prefix_len}"
            if wl.prefix_groups:
                text += f", {wl.prefix_groups} prefix groups of {wl.prefix_len} tokens"
        if wl.turns != 1:
            turns = "all" if wl.turns == 0 else str(wl.turns)
            text += f", {turns}-turn conversations (think time {wl.think_time} s)"
        text += ", " + _FORMAT_WORDS.get(self.prompts_as, self.prompts_as)
        if not wl.ignore_eos:
            text += ", may stop at EOS"
        return text

    def public(self) -> dict[str, Any]:
        """The configuration as written to JSON, with secrets hidden."""
        plan = dataclasses.asdict(self.plan)
        if math.isinf(plan["request_rate"]):
            plan["request_rate"] = "inf"
        return {
            "target": self.target.public(),
            "workload": self.workload_public(),
            "plan": plan,
            "dialect": dataclasses.asdict(self.dialect),
            "timeouts": dataclasses.asdict(self.timeouts),
            "window_s": self.window_s,
        }
