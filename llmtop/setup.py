"""What every command needs before load starts: the target (or the built-in simulator),
the preflight, ONE engine detection, and the server-metrics poller.

`run`, `knee`, the UI and each `launch` sweep point all come through `prepare()`, so a target
is probed the same way everywhere and only once per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from llmtop.config import RunConfig
from llmtop.errors import ConfigError, LlmtopError
from llmtop.profiles import Profile

if TYPE_CHECKING:
    from llmtop.engines.detect import EngineInfo
    from llmtop.engines.poller import MetricsPoller

Echo = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class SimChoice:
    """The simulated engine to start when no URL is given."""

    engine: str = "vllm"
    gpu: str = "a100-80g"
    model: str = "llama-3-8b"
    args: tuple[str, ...] = ()
    tp: int = 1


# Engine arguments a profile may carry that the simulator understands (trtllm's name first).
_SIM_ARGS = {
    "max_batch_size": "--max-num-seqs",
    "max_num_seqs": "--max-num-seqs",
    "max_num_tokens": "--max-num-batched-tokens",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "enable_prefix_caching": "--enable-prefix-caching",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "kv_cache_free_gpu_memory_fraction": "--gpu-memory-utilization",
}


def sim_args_for(engine: dict[str, Any] | None) -> list[str]:
    """The profile's `[engine] args` the simulator can imitate, as `llmtop sim` flags."""
    args = (engine or {}).get("args")
    if not isinstance(args, dict):
        return []
    out: list[str] = []
    for key, value in args.items():
        flag = _SIM_ARGS.get(key.replace("-", "_").lstrip("_"))
        if flag is None:
            continue
        if isinstance(value, bool):
            out.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            out += [flag, str(value)]
    return out


@contextlib.contextmanager
def target_server(url: str, sim: SimChoice) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The given URL, or a simulated engine started for this run and stopped after it."""
    if url:
        yield url, None
        return
    try:
        from llmtop.sim.launcher import SimStartError, start_sim
    except ImportError:
        raise ConfigError("no --url given and the built-in simulator is not available") from None
    try:
        handle = start_sim(
            engine=sim.engine, gpu=sim.gpu, model=sim.model, tp=sim.tp, extra_args=sim.args
        )
    except SimStartError as exc:
        raise LlmtopError(f"the built-in simulator did not start: {exc}") from None
    try:
        yield handle.url, handle.describe()
    finally:
        handle.stop()


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    config: RunConfig  # the final one: URL, model and dialect filled in
    extra: dict[str, Any]  # what every JSON / snapshot carries about the target and plan
    notes: tuple[str, ...]
    engine: EngineInfo
    gpu_metrics: str | None = None  # --gpu-metrics: "local" (NVML) or a dcgm-exporter URL

    def new_poller(self, on_problem: Echo | None = None) -> MetricsPoller:
        """The server's own metrics at ~1 Hz, in a thread of this (parent) process; GPU
        telemetry read beside each scrape when --gpu-metrics asks for it."""
        from llmtop.engines.poller import MetricsPoller

        gpu = None
        if self.gpu_metrics:
            from llmtop.engines.gpu import check_source, open_source

            gpu = open_source(self.gpu_metrics)  # ConfigError: one line, before any load
            problem = check_source(gpu)
            if problem is not None:
                gpu = None
                if on_problem is not None:
                    on_problem(problem + "; the load goes on without them")
        return MetricsPoller.for_engine(
            self.engine,
            self.config.target.auth_headers(),
            on_problem=on_problem,
            gpu=gpu,
            window_s=self.config.window_s,
        )

    def start_poller(self, on_problem: Echo | None = None) -> MetricsPoller:
        return self.new_poller(on_problem).start()

    def reset_prefix_cache(self) -> tuple[bool, str]:
        """The engine's own prefix-cache reset (call it before each repeat); (done, note)."""
        from llmtop.engines.cache import reset_prefix_cache

        t = self.config.target
        return reset_prefix_cache(t.url, self.engine, t.auth_headers())


@contextlib.contextmanager
def prepare(
    config: RunConfig,
    sim: SimChoice | None = None,
    profile: Profile | None = None,
    echo: Echo = lambda m: None,
    gpu_metrics: str | None = None,
) -> Iterator[PreparedRun]:
    """Start the simulator if there is no URL, preflight, detect the engine once; yield."""
    from llmtop.engines.detect import detect_engine
    from llmtop.preflight import preflight

    sim = sim or SimChoice()
    if profile is not None and not sim.args:
        sim = dataclasses.replace(sim, args=tuple(sim_args_for(profile.engine)))
    with target_server(config.target.url, sim) as (url, simulated):
        target = dataclasses.replace(config.target, url=url, simulated=simulated)
        config = dataclasses.replace(config, target=target)
        pre = preflight(config)
        target = dataclasses.replace(target, model=pre.model)
        config = dataclasses.replace(
            config,
            target=target,
            dialect=pre.dialect,
            text_prompts=pre.text_prompts,
            prefix_texts=pre.prefix_texts,
            unique_words=pre.unique_words,
        )
        for note in pre.notes:
            echo(f"llmtop: {note}")
        engine = detect_engine(url, target.auth_headers())
        echo(f"llmtop: engine: {engine.label}")
        notes = pre.notes
        if config.workload.reset_prefix_cache:  # before the run (each sweep point comes here)
            from llmtop.engines.cache import reset_prefix_cache

            _, reset_note = reset_prefix_cache(url, engine, target.auth_headers())
            echo(f"llmtop: {reset_note}")
            notes = (*notes, reset_note)
        extra: dict[str, Any] = {
            "engine": engine.public(),
            "config": config.public(),
            "target": target.public(),
            "load": config.plan.describe(),
            "workload": config.workload_public(),
            "notes": list(notes),
        }
        if profile is not None:
            extra["profile"] = profile.public()
            if profile.engine:
                extra["engine_config"] = profile.engine
        yield PreparedRun(config, extra, notes, engine, gpu_metrics)
