"""The simulated GPUs' telemetry, as NVIDIA's dcgm-exporter writes it (`/dcgm/metrics`).

A simple utilisation model, fed by the engine loop's steps (real seconds):

- busy: the kernels' share of a step (`Step.gpu_s`, the roofline time plus all-reduces;
  the per-iteration host time leaves the GPU idle), scaled by the server's time_scale.
- `DCGM_FI_DEV_GPU_UTIL` (%): busy time / wall time over the last second.
- `DCGM_FI_PROF_SM_ACTIVE` (0..1): busy × (0.8 + 0.2 × compute share): memory-bound
  kernels keep warps on most SMs too, compute-bound ones on all of them.
- power (W) = idle + (TDP − idle) × intensity while busy, idle otherwise; intensity =
  0.6 + 0.4 × compute share (a weight-streaming decode draws less than a dense prefill).
  `DCGM_FI_DEV_POWER_USAGE` is its mean over the last second.
- `DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION` (mJ, a counter since the server started): the
  exact integral of that power: idle × elapsed + Σ over steps (TDP − idle) × intensity ×
  busy, the current step's elapsed part included.
- `DCGM_FI_DEV_FB_USED` / `_FB_FREE` (MiB): the engine preallocates its KV cache, so used
  = weights / tp + activation reserve + KV pool + CUDA context, constant while serving.

Tensor parallelism splits every step evenly: each of the `tp` GPUs reports the same.
"""

from __future__ import annotations

import socket
import uuid
from bisect import bisect_left
from collections import deque

from llmtop.sim.model import SimSettings

MIB = 1 << 20
CUDA_CONTEXT_BYTES = 512 * MIB
WINDOW_S = 1.0  # DCGM's gauges are sampled over about its 1 s update period
SM_FLOOR = 0.8
POWER_FLOOR = 0.6
_HISTORY = 8192  # step samples kept for the window (a step is ≥ ~1 ms)


class GpuMeter:
    """Cumulative busy time, SM-active time and dynamic energy, sampled per step."""

    def __init__(self, settings: SimSettings, start: float, time_scale: float = 1.0) -> None:
        self.settings = settings
        self.gpu = settings.gpu
        self.start = start
        self.scale = time_scale
        self.busy_s = 0.0
        self.sm_s = 0.0
        self.dyn_j = 0.0  # energy above idle, per GPU
        # (step end, busy_s, sm_s, dyn_j) after each step, for windowed gauges
        self._samples: deque[tuple[float, float, float, float]] = deque(maxlen=_HISTORY)
        self._current: tuple[float, float, float, float] | None = None  # start, busy, sm, w
        host = socket.gethostname()
        self.hostname = host
        base = uuid.uuid5(uuid.NAMESPACE_DNS, f"llmtop-sim.{host}.{settings.seed}")
        self.uuids = [f"GPU-{uuid.uuid5(base, str(i))}" for i in range(settings.tp)]
        f = settings.flavour
        self.fb_used_mib = int(
            (
                settings.model.weight_bytes / settings.tp
                + settings.activation_reserve_bytes
                + max(settings.kv_bytes_per_gpu, 0.0)
                + CUDA_CONTEXT_BYTES
            )
            // MIB
        )
        if f.util_of_free:  # trtllm's share of free memory leaves the rest free
            self.fb_used_mib = min(self.fb_used_mib, int(self.gpu.mem_bytes // MIB))
        self.fb_free_mib = max(int(self.gpu.mem_bytes // MIB) - self.fb_used_mib, 0)

    def step_started(self, start: float, gpu_s: float, compute_share: float) -> None:
        """A step began at `start` with `gpu_s` model-seconds of kernels (GPU busy first)."""
        busy = gpu_s / self.scale
        sm = busy * (SM_FLOOR + (1.0 - SM_FLOOR) * compute_share)
        watts = (self.gpu.tdp_w - self.gpu.idle_w) * (
            POWER_FLOOR + (1.0 - POWER_FLOOR) * compute_share
        )
        self._current = (start, busy, sm, watts)

    def step_ended(self, end: float) -> None:
        cur = self._current
        if cur is None:
            return
        _, busy, sm, watts = cur
        self.busy_s += busy
        self.sm_s += sm
        self.dyn_j += watts * busy
        self._current = None
        self._samples.append((end, self.busy_s, self.sm_s, self.dyn_j))

    def _totals(self, now: float) -> tuple[float, float, float]:
        """busy_s, sm_s, dyn_j up to `now`, the running step's elapsed part included."""
        busy, sm, dyn = self.busy_s, self.sm_s, self.dyn_j
        cur = self._current
        if cur is not None:
            start, b, s, w = cur
            done = min(max(now - start, 0.0), b)
            if b > 0:
                busy += done
                sm += s * done / b
                dyn += w * done
        return busy, sm, dyn

    def energy_mj(self, now: float) -> float:
        _, _, dyn = self._totals(now)
        return (self.gpu.idle_w * (now - self.start) + dyn) * 1000.0

    def window(self, now: float) -> tuple[float, float, float]:
        """GPU utilisation (0..1), SM active (0..1) and mean power (W) over the last second.

        Exact means over [the last step end before now − 1 s, now]; with no step before
        the window, over [now − 1 s, now].
        """
        busy1, sm1, dyn1 = self._totals(now)
        s = self._samples
        t0 = now - WINDOW_S
        i = bisect_left(s, (t0,))
        if i > 0:
            base_t, busy0, sm0, dyn0 = s[i - 1]
        elif s and len(s) == s.maxlen:  # history trimmed: the oldest sample we have
            base_t, busy0, sm0, dyn0 = s[0]
        else:
            base_t, busy0, sm0, dyn0 = max(t0, self.start), 0.0, 0.0, 0.0
        span = now - base_t
        if span <= 0:
            return 0.0, 0.0, self.gpu.idle_w
        util = min((busy1 - busy0) / span, 1.0)
        sm = min((sm1 - sm0) / span, 1.0)
        watts = self.gpu.idle_w + (dyn1 - dyn0) / span
        return util, sm, watts

    def text(self, now: float) -> bytes:
        """The exporter's text: one series per GPU, dcgm-exporter's names and labels."""
        util, sm, watts = self.window(now)
        energy = self.energy_mj(now)
        rows = (
            ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", float(round(util * 100))),
            (
                "DCGM_FI_PROF_SM_ACTIVE",
                "gauge",
                "The ratio of cycles an SM has at least 1 warp assigned (in %).",
                sm,
            ),
            ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", self.fb_used_mib),
            ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", self.fb_free_mib),
            ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", watts),
            (
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                "counter",
                "Total energy consumption since boot (in mJ).",
                float(int(energy)),
            ),
        )
        out = ["# llmtop-sim: simulated GPUs, not a real dcgm-exporter"]
        for name, typ, doc, value in rows:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {typ}")
            for i, gpu_uuid in enumerate(self.uuids):
                bus = f"00000000:{0x10 + i:02X}:00.0"
                out.append(
                    f'{name}{{gpu="{i}",UUID="{gpu_uuid}",pci_bus_id="{bus}",'
                    f'device="nvidia{i}",modelName="{self.gpu.product}",'
                    f'Hostname="{self.hostname}"}} {float(value)!r}'
                )
        return ("\n".join(out) + "\n").encode()
