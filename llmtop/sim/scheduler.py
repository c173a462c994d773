"""Continuous-batching scheduler for the simulator: waiting queue, running batch, KV blocks.

Pure: it never reads a clock. The caller calls `schedule()` to plan one iteration (which
also gives the iteration's duration from the performance model) and `complete(step, now)`
when that iteration ends. A discrete-event run (`llmtop.sim.des`) and the real-time server
(`llmtop.sim.server`) drive the very same object.

The policy follows vLLM V1 (running requests first in arrival order, then waiting ones, a
token budget per step, chunked prefill, recompute preemption of the newest running request
when KV blocks run out). With `reserve_full` it follows TensorRT-LLM's default
GUARANTEED_NO_EVICT capacity policy instead: a request is admitted only when KV blocks for
its prompt plus max_tokens are free, so nothing is ever preempted.

Prefix caching (`llmtop.sim.kvcache`): a request that carries its prompt's token ids starts
with the longest run of cached full blocks it shares with earlier sequences (never the
whole prompt: the last token is always computed, as in vLLM), and only the rest is
prefilled. Requests without token ids (the discrete-event runs) never hit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llmtop.sim.kvcache import ROOT_HASH, KvBlocks, block_hashes
from llmtop.sim.model import PerfModel, SimSettings, blocks_for
from llmtop.sim.tokens import EOT, WORDS, text_token_ids

WAITING, RUNNING, FINISHED = 0, 1, 2


@dataclass(eq=False, slots=True)
class SimRequest:
    """One request inside the engine; `sink` is opaque to the scheduler (the server's stream)."""

    rid: int
    prompt_len: int
    max_tokens: int
    stop_at: int  # output length at which generation ends (EOS or max_tokens)
    arrival: float
    eos: bool = False  # stop_at comes from a sampled EOS rather than max_tokens
    num_computed: int = 0  # tokens whose K/V are in the cache
    output_len: int = 0
    state: int = WAITING
    first_token_time: float | None = None
    finish_time: float | None = None
    preemptions: int = 0
    sink: Any = None
    token_ids: list[int] | None = None  # the prompt's ids; None: no prefix caching
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of full blocks known so far
    num_registered: int = 0  # leading blocks entered in the prefix cache
    num_cached_tokens: int = 0  # prompt tokens found in the cache when first scheduled
    scheduled_time: float | None = None  # start of the step that first scheduled it
    last_token_time: float | None = None

    @property
    def blocks(self) -> int:
        return len(self.block_ids)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.eos and self.output_len >= self.stop_at else "length"


@dataclass(slots=True)
class Step:
    """One planned iteration: who computes how many tokens, and how long it takes."""

    work: list[tuple[SimRequest, int]]
    duration: float
    num_ctx_requests: int
    num_gen_requests: int
    num_ctx_tokens: int
    num_new_requests: int
    preempted: int
    admitted: list[SimRequest] = field(default_factory=list)  # scheduled for the first time
    gpu_s: float = 0.0  # of `duration`, the kernels' share (the rest is host time)
    compute_share: float = 0.0  # compute-bound fraction of the kernels' roofline time


@dataclass(slots=True)
class StepResult:
    """What an iteration produced: one token each for `emitted`; `finished` are done."""

    emitted: list[SimRequest] = field(default_factory=list)
    finished: list[SimRequest] = field(default_factory=list)


class Scheduler:
    """See the module docstring; `counters` mirror what engines export as metrics."""

    def __init__(self, settings: SimSettings, perf: PerfModel | None = None) -> None:
        self.settings = settings
        self.perf = perf or PerfModel(settings)
        f = settings.flavour
        self.block_size = f.block_size
        self.max_num_seqs = f.max_num_seqs
        self.budget = f.max_num_batched_tokens
        self.chunked = f.chunked_prefill
        self.reserve_full = f.reserve_full
        self.total_blocks = settings.num_blocks
        self.kv = KvBlocks(settings.num_blocks, f.enable_prefix_caching)
        self.caching = f.enable_prefix_caching
        vocab = settings.model.vocab
        self._word_ids = [text_token_ids(w, vocab)[0] for w in WORDS]
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.num_preemptions_total = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.prefix_cache_queries_total = 0
        self.prefix_cache_hits_total = 0
        self.blocks_reused_total = 0  # trtllm's kvCacheStats reusedBlocks / missedBlocks
        self.blocks_missed_total = 0
        self.num_finished_total = 0
        self.iterations = 0

    # -- admission ---------------------------------------------------------------------
    def add(self, req: SimRequest) -> None:
        """Queue a request; the caller has already checked it fits max_model_len."""
        req.state = WAITING
        if self.caching and req.token_ids is not None and not req.block_hashes:
            req.block_hashes = block_hashes(req.token_ids, self.block_size)
        self.waiting.append(req)

    def abort(self, req: SimRequest) -> None:
        """Drop a request (client went away): free its blocks, forget it."""
        if req.state == FINISHED:
            return
        if req.state == RUNNING:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self._free(req)
        req.state = FINISHED

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def free_blocks(self) -> int:
        """Blocks nobody uses, cached or not (cached ones are evicted when needed)."""
        return self.kv.num_free

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use (vllm:kv_cache_usage_perc is this, 0..1)."""
        if not self.total_blocks:
            return 0.0
        return 1.0 - self.kv.num_free / self.total_blocks

    def reset_prefix_cache(self) -> int:
        """Forget cached blocks nobody uses; returns how many were dropped."""
        return self.kv.reset()

    def _free(self, req: SimRequest) -> None:
        self.kv.release(req.block_ids)
        req.block_ids = []
        req.num_registered = 0

    def _token_id(self, req: SimRequest, pos: int) -> int:
        """Token id at `pos` of the request's sequence (prompt, then generated words)."""
        if pos < req.prompt_len:
            assert req.token_ids is not None
            return req.token_ids[pos]
        k = pos - req.prompt_len
        if req.eos and k == req.stop_at - 1:
            return EOT  # Llama-3's end of turn: a later turn's template has it there too
        return self._word_ids[(req.rid * 7 + k) % len(self._word_ids)]

    def _register(self, req: SimRequest, full: int) -> None:
        """Enter the request's newly full, computed blocks in the prefix cache."""
        hashes = req.block_hashes
        bs = self.block_size
        while len(hashes) < full:
            j = len(hashes)
            parent = hashes[-1] if hashes else ROOT_HASH
            hashes.append(
                hash((parent, *(self._token_id(req, p) for p in range(j * bs, (j + 1) * bs))))
            )
        kv = self.kv
        for j in range(req.num_registered, full):
            kv.cache_block(req.block_ids[j], hashes[j])
        req.num_registered = full

    # -- one iteration -----------------------------------------------------------------
    def schedule(self) -> Step | None:
        """Plan the next iteration; None when there is nothing to run."""
        budget = self.budget
        bs = self.block_size
        kv = self.kv
        work: list[tuple[SimRequest, int]] = []
        tokens = sampled = kv_read = 0
        attn = 0.0
        ctx_reqs = gen_reqs = ctx_tokens = 0
        preempted = 0
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            total = req.prompt_len + req.output_len
            remaining = total - req.num_computed
            n = remaining if remaining < budget else budget
            if not self.reserve_full:
                need = blocks_for(req.num_computed + n, bs) - len(req.block_ids)
                scheduled_self = True
                while need > kv.num_free:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted += 1
                    if victim is req:
                        scheduled_self = False
                        break
                if not scheduled_self:
                    break
                if need > 0:
                    req.block_ids += kv.allocate(need)
            ctx = req.num_computed
            work.append((req, n))
            budget -= n
            tokens += n
            attn += n * (ctx + n * 0.5)
            kv_read += ctx + n
            if n == remaining:
                sampled += 1
            if req.output_len == 0 or remaining > 1:
                ctx_reqs += 1
                ctx_tokens += n
            else:
                gen_reqs += 1
            i += 1

        new_reqs = 0
        admitted: list[SimRequest] = []
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                req = waiting[0]
                total = req.prompt_len + req.output_len
                hit = kv.lookup(req.block_hashes, (total - 1) // bs) if self.caching else []
                cached = len(hit) * bs
                remaining = total - cached
                if remaining > budget and not self.chunked:
                    break
                n = remaining if remaining < budget else budget
                if self.reserve_full:
                    need = blocks_for(req.prompt_len + req.max_tokens, bs) - len(hit)
                else:
                    need = blocks_for(cached + n, bs) - len(hit)
                if need + (kv.evictable(hit) if hit else 0) > kv.num_free:
                    break
                waiting.popleft()
                if hit:
                    kv.touch(hit)
                req.block_ids = hit + kv.allocate(need)
                req.num_registered = len(hit)
                req.num_computed = cached
                req.state = RUNNING
                running.append(req)
                if req.preemptions == 0:
                    admitted.append(req)
                    req.num_cached_tokens = cached
                    self.prompt_tokens_total += req.prompt_len
                    self.prefix_cache_queries_total += req.prompt_len
                    self.prefix_cache_hits_total += cached
                    self.blocks_reused_total += len(hit)
                    self.blocks_missed_total += blocks_for(req.prompt_len, bs) - len(hit)
                work.append((req, n))
                budget -= n
                tokens += n
                attn += n * (cached + n * 0.5)
                kv_read += cached + n
                if n == remaining:
                    sampled += 1
                ctx_reqs += 1
                ctx_tokens += n
                new_reqs += 1
        if not work:
            return None
        duration = self.perf.step_time_agg(tokens, sampled, attn, kv_read, len(work))
        perf = self.perf
        return Step(
            work,
            duration,
            ctx_reqs,
            gen_reqs,
            ctx_tokens,
            new_reqs,
            preempted,
            admitted,
            perf.last_gpu_s,
            perf.last_compute_share,
        )

    def _preempt(self, req: SimRequest) -> None:
        """Recompute preemption: drop its KV, put it first in line, keep its output."""
        self._free(req)
        req.num_computed = 0
        req.state = WAITING
        req.preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(req)

    def complete(self, step: Step, now: float) -> StepResult:
        """Apply an iteration that ended at `now`: advance caches, sample tokens, finish."""
        self.iterations += 1
        out = StepResult()
        emitted = out.emitted
        any_finished = False
        caching = self.caching
        bs = self.block_size
        for req, n in step.work:
            if req.state != RUNNING:  # aborted while the step ran
                continue
            req.num_computed += n
            if (
                caching
                and req.token_ids is not None
                and req.num_computed // bs > req.num_registered
            ):
                self._register(req, req.num_computed // bs)
            if req.num_computed >= req.prompt_len + req.output_len:
                req.output_len += 1
                emitted.append(req)
                if req.first_token_time is None:
                    req.first_token_time = now
                if req.output_len >= req.stop_at:
                    req.state = FINISHED
                    req.finish_time = now
                    self._free(req)
                    out.finished.append(req)
                    any_finished = True
        self.generation_tokens_total += len(emitted)
        if any_finished:
            self.num_finished_total += len(out.finished)
            self.running = [r for r in self.running if r.state == RUNNING]
        return out
