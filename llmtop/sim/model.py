"""The simulator's performance model: hardware and model presets, a roofline step time.

Pure arithmetic: no clock, no asyncio. The scheduler asks `PerfModel.step_time` how long one
continuous-batching iteration takes and the caller decides what "now" is. Equations are
written out in docs/sim.md; keep the two in step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

GIB = 1 << 30


class SimConfigError(ValueError):
    """A preset or setting the simulator cannot honour; the message is one line for users."""


@dataclass(frozen=True)
class GpuPreset:
    """One accelerator: dense BF16 peak, HBM bandwidth and capacity, interconnect."""

    name: str
    peak_flops: float  # dense BF16 FLOP/s
    mem_bw: float  # HBM bytes/s
    mem_bytes: int
    link_bw: float  # per-GPU tensor-parallel all-reduce bandwidth, bytes/s
    link_latency_s: float  # one all-reduce's fixed latency
    large: bool  # vLLM picks bigger default batch settings on >= 70 GiB non-A100 parts
    idle_w: float  # board power with nothing running (what DCGM reports at rest)
    tdp_w: float  # board power limit (TDP)
    product: str  # the name nvidia-smi and DCGM give it


@dataclass(frozen=True)
class ModelPreset:
    """A decoder-only transformer described by the numbers the roofline needs."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: float
    max_model_len: int
    bytes_per_param: int = 2  # BF16
    tied_embeddings: bool = False

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def linear_params(self) -> float:
        """Parameters touched per token by matmuls, without embedding and LM head (untied)."""
        return self.params - (1 if self.tied_embeddings else 2) * self.vocab * self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer, BF16."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param


GPUS: dict[str, GpuPreset] = {
    "a100-80g": GpuPreset(
        "a100-80g", 312e12, 2.039e12, 80 * GIB, 300e9, 8e-6, False,
        60.0, 400.0, "NVIDIA A100-SXM4-80GB",
    ),
    "h100-sxm": GpuPreset(
        "h100-sxm", 989e12, 3.35e12, 80 * GIB, 450e9, 6e-6, True,
        70.0, 700.0, "NVIDIA H100 80GB HBM3",
    ),
    "h200": GpuPreset(
        "h200", 989e12, 4.8e12, 141 * 10**9, 450e9, 6e-6, True, 75.0, 700.0, "NVIDIA H200",
    ),
    "l40s": GpuPreset(
        "l40s", 362e12, 0.864e12, 48 * GIB, 32e9, 15e-6, False, 35.0, 350.0, "NVIDIA L40S",
    ),
}  # fmt: skip

MODELS: dict[str, ModelPreset] = {
    "llama-3-8b": ModelPreset("llama-3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 8.03e9, 8192),
    "llama-3-70b": ModelPreset("llama-3-70b", 80, 8192, 64, 8, 128, 28672, 128256, 70.55e9, 8192),
    # A small, fast preset: short steps, so a laptop demo (and the throughput benchmark)
    # sees many tokens per second. Llama-3.2-1B ties embedding and LM head.
    "llama-3.2-1b": ModelPreset(
        "llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, 1.24e9, 8192, tied_embeddings=True
    ),
}

ENGINES = ("vllm", "trtllm")


@dataclass(frozen=True)
class FlavourParams:
    """What distinguishes one engine from another: efficiencies, overheads, defaults.

    Never outcomes: every latency comes out of the roofline and the scheduler.
    """

    engine: str
    eff_flops: float  # achieved fraction of peak FLOP/s in matmul/attention kernels
    eff_bw: float  # achieved fraction of HBM bandwidth when streaming weights and KV
    step_overhead_s: float  # fixed per-iteration cost: scheduling, sampling, launch gaps
    per_seq_overhead_s: float  # per-running-sequence CPU cost (input prep, detokenize)
    block_size: int  # KV-cache block, tokens
    chunked_prefill: bool
    reserve_full: bool  # admit only if KV for prompt + max_tokens fits (no preemption)
    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    # For vLLM, utilisation is a share of total memory; for trtllm, of what is free after
    # the weights (kv_cache_free_gpu_memory_fraction).
    util_of_free: bool = False
    enable_prefix_caching: bool = True  # vLLM V1 and trtllm-serve (block reuse) default on
    # trtllm-build tunes one optimization profile at opt_num_tokens = max_batch_size: an
    # engine built for a small batch runs its context steps on kernels chosen for a few
    # tokens (see docs/sim.md, "Small batches").
    opt_profile_penalty: bool = False


def flavour_defaults(engine: str, gpu: GpuPreset) -> FlavourParams:
    """The engine's defaults on this GPU (vLLM V1 picks batch limits by GPU class)."""
    if engine == "vllm":
        big = gpu.large
        return FlavourParams(
            engine="vllm",
            eff_flops=0.78,
            eff_bw=0.85,
            step_overhead_s=0.0025,
            per_seq_overhead_s=10e-6,
            block_size=16,
            chunked_prefill=True,
            reserve_full=False,
            gpu_memory_utilization=0.9,
            max_num_seqs=1024 if big else 256,
            max_num_batched_tokens=8192 if big else 2048,
        )
    if engine == "trtllm":
        return FlavourParams(
            engine="trtllm",
            eff_flops=0.87,
            eff_bw=0.88,
            step_overhead_s=0.001,
            per_seq_overhead_s=5e-6,
            block_size=32,
            chunked_prefill=False,
            reserve_full=True,
            gpu_memory_utilization=0.9,
            max_num_seqs=2048,
            max_num_batched_tokens=8192,
            util_of_free=True,
            opt_profile_penalty=True,
        )
    raise SimConfigError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")


@dataclass(frozen=True)
class SimSettings:
    """Everything that defines one simulated server; `describe()` is what users see."""

    engine: str
    gpu: GpuPreset
    model: ModelPreset
    tp: int
    flavour: FlavourParams
    num_blocks: int
    activation_reserve_bytes: float
    kv_bytes_per_gpu: float
    seed: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_blocks * self.flavour.block_size

    def describe(self) -> dict[str, object]:
        f = self.flavour
        return {
            "simulated": True,
            "engine": self.engine,
            "gpu": self.gpu.name,
            "model": self.model.name,
            "tp": self.tp,
            "max_num_seqs": f.max_num_seqs,
            "max_num_batched_tokens": f.max_num_batched_tokens,
            "enable_chunked_prefill": f.chunked_prefill,
            "gpu_memory_utilization": f.gpu_memory_utilization,
            "block_size": f.block_size,
            "enable_prefix_caching": f.enable_prefix_caching,
            "num_kv_blocks": self.num_blocks,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "max_model_len": self.model.max_model_len,
            "scheduling": "guaranteed_no_evict" if f.reserve_full else "preempt_recompute",
            "seed": self.seed,
        }


def _choose(name: str, table: dict[str, object], what: str) -> object:
    try:
        return table[name]
    except KeyError:
        raise SimConfigError(
            f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}"
        ) from None


def build_settings(
    engine: str = "vllm",
    gpu: str = "a100-80g",
    model: str = "llama-3-8b",
    tp: int = 1,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    enable_chunked_prefill: bool | None = None,
    gpu_memory_utilization: float | None = None,
    seed: int = 0,
    enable_prefix_caching: bool | None = None,
) -> SimSettings:
    """Resolve presets and overrides into settings; raise SimConfigError with one line."""
    if engine not in ENGINES:
        raise SimConfigError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    g = _choose(gpu, GPUS, "gpu")  # type: ignore[arg-type]
    m = _choose(model, MODELS, "model")  # type: ignore[arg-type]
    assert isinstance(g, GpuPreset) and isinstance(m, ModelPreset)
    if tp not in (1, 2, 4, 8):
        raise SimConfigError(f"bad --tp {tp}; valid: 1, 2, 4, 8")
    if m.kv_heads % tp and tp % m.kv_heads:
        raise SimConfigError(f"--tp {tp} does not divide {m.kv_heads} kv heads of {m.name}")
    f = flavour_defaults(engine, g)
    if max_num_seqs is not None:
        if max_num_seqs < 1:
            raise SimConfigError(f"bad --max-num-seqs {max_num_seqs}; valid: >= 1")
        f = replace(f, max_num_seqs=max_num_seqs)
    if enable_chunked_prefill is not None:
        f = replace(f, chunked_prefill=enable_chunked_prefill)
    if enable_prefix_caching is not None:
        f = replace(f, enable_prefix_caching=enable_prefix_caching)
    if max_num_batched_tokens is not None:
        if max_num_batched_tokens < 1:
            raise SimConfigError(
                f"bad --max-num-batched-tokens {max_num_batched_tokens}; valid: >= 1"
            )
        f = replace(f, max_num_batched_tokens=max_num_batched_tokens)
    elif not f.chunked_prefill:
        # Without chunking a whole prompt must fit one step (vLLM raises the budget too).
        f = replace(f, max_num_batched_tokens=max(f.max_num_batched_tokens, m.max_model_len))
    if not f.chunked_prefill and f.max_num_batched_tokens < m.max_model_len:
        raise SimConfigError(
            f"--max-num-batched-tokens {f.max_num_batched_tokens} is below max_model_len "
            f"{m.max_model_len} with chunked prefill off; raise it or enable chunked prefill"
        )
    if gpu_memory_utilization is not None:
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise SimConfigError(
                f"bad --gpu-memory-utilization {gpu_memory_utilization}; valid: (0, 1]"
            )
        f = replace(f, gpu_memory_utilization=gpu_memory_utilization)

    weights = m.weight_bytes / tp
    # Activation peak of one step: token-parallel buffers for the widest matmul plus logits
    # for every sequence that samples, plus a fixed CUDA-graph/workspace reserve.
    act = (
        f.max_num_batched_tokens * (m.hidden * 4 + m.intermediate * 2 // tp) * 2
        + f.max_num_seqs * m.vocab * 4 / tp
        + 1 * GIB
    )
    if f.util_of_free:
        kv_bytes = (g.mem_bytes - weights - act) * f.gpu_memory_utilization
    else:
        kv_bytes = g.mem_bytes * f.gpu_memory_utilization - weights - act
    kv_per_token = m.kv_bytes_per_token / tp
    num_blocks = int(kv_bytes // (kv_per_token * f.block_size)) if kv_bytes > 0 else 0
    if num_blocks * f.block_size < m.max_model_len:
        need = (weights + act + m.max_model_len * kv_per_token) / GIB
        raise SimConfigError(
            f"{m.name} does not fit on {g.name} with tp={tp}, gpu-memory-utilization="
            f"{f.gpu_memory_utilization}: needs ~{need:.1f} GiB per GPU of "
            f"{g.mem_bytes / GIB:.0f} GiB; raise --tp or --gpu-memory-utilization, or pick "
            f"a larger --gpu ({', '.join(sorted(GPUS))})"
        )
    return SimSettings(
        engine=engine,
        gpu=g,
        model=m,
        tp=tp,
        flavour=f,
        num_blocks=num_blocks,
        activation_reserve_bytes=act,
        kv_bytes_per_gpu=kv_bytes,
        seed=seed,
    )


OPT_PROFILE_FULL_TOKENS = 128  # an opt_num_tokens from which GEMM tiles are full-size
OPT_PROFILE_EXPONENT = 0.27  # calibrated to the study's scenario 1 (docs/sim.md)


def opt_profile_efficiency(opt_num_tokens: int) -> float:
    """Share of the context-step FLOP rate an engine tuned for `opt_num_tokens` keeps.

    TensorRT picks kernels at the profile's optimum shape; tuned for a handful of tokens,
    they run a 2048-token context on small tiles. 1.0 from OPT_PROFILE_FULL_TOKENS up.
    """
    return min(1.0, (max(opt_num_tokens, 1) / OPT_PROFILE_FULL_TOKENS) ** OPT_PROFILE_EXPONENT)


@dataclass(frozen=True)
class SeqWork:
    """One sequence's share of a step: `new` tokens computed on top of `context` cached."""

    new: int
    context: int
    samples: bool  # whether the step ends with a sampled token for this sequence


class PerfModel:
    """Roofline step time: max(compute, memory) + overheads; see docs/sim.md."""

    def __init__(self, settings: SimSettings) -> None:
        self.s = settings
        m, g, f, tp = settings.model, settings.gpu, settings.flavour, settings.tp
        self._flops_rate = g.peak_flops * f.eff_flops * tp
        # Steps wider than the engine's optimization profile run at a lower rate.
        self._opt_tokens = min(f.max_num_seqs, f.max_num_batched_tokens)
        self._wide_flops_rate = self._flops_rate * (
            opt_profile_efficiency(self._opt_tokens) if f.opt_profile_penalty else 1.0
        )
        self._bw_rate = g.mem_bw * f.eff_bw * tp
        self._lin2 = 2.0 * m.linear_params
        self._head2 = 2.0 * m.hidden * m.vocab
        self._attn4 = 4.0 * m.layers * m.heads * m.head_dim
        self._kv_tok = float(m.kv_bytes_per_token)
        self.last_gpu_s = 0.0
        self.last_compute_share = 0.0
        self._weights = m.weight_bytes
        self._act_tok = 2.0 * m.hidden * 2 * m.layers  # activations in/out per layer, BF16
        if tp > 1:
            self._comm_fixed = 2 * m.layers * g.link_latency_s
            self._comm_per_tok = 2 * m.layers * 2 * (tp - 1) / tp * m.hidden * 2 / g.link_bw
        else:
            self._comm_fixed = 0.0
            self._comm_per_tok = 0.0

    def step_time(self, work: Sequence[SeqWork]) -> float:
        """Seconds for one iteration computing `work`; 0 when there is nothing to do."""
        if not work:
            return 0.0
        tokens = sampled = kv_read = 0
        attn = 0.0
        for w in work:
            tokens += w.new
            sampled += w.samples
            attn += w.new * (w.context + w.new * 0.5)
            kv_read += w.context + w.new
        return self.step_time_agg(tokens, sampled, attn, kv_read, len(work))

    def step_time_agg(
        self, tokens: int, sampled: int, attn: float, kv_read: int, nseq: int
    ) -> float:
        """The same from aggregates, so the scheduler's hot loop allocates nothing.

        attn = sum over sequences of new * (context + new / 2) (causal query-key pairs);
        kv_read = sum of context + new (tokens whose K/V are read once per layer).
        """
        if nseq == 0:
            self.last_gpu_s = self.last_compute_share = 0.0
            return 0.0
        flops = self._lin2 * tokens + self._head2 * sampled + self._attn4 * attn
        mem = self._weights + self._kv_tok * kv_read + self._act_tok * tokens
        rate = self._flops_rate if tokens <= self._opt_tokens else self._wide_flops_rate
        t_flops = flops / rate
        t = max(t_flops, mem / self._bw_rate)
        f = self.s.flavour
        gpu = t + self._comm_fixed + self._comm_per_tok * tokens
        # For the GPU meter (llmtop.sim.gpu): kernel time and how compute-bound it was.
        self.last_gpu_s = gpu
        self.last_compute_share = t_flops / t if t > 0 else 0.0
        return gpu + f.step_overhead_s + f.per_seq_overhead_s * nseq


def blocks_for(tokens: int, block_size: int) -> int:
    """KV blocks that hold `tokens` tokens."""
    return math.ceil(tokens / block_size) if tokens > 0 else 0
