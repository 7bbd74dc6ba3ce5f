"""The GPU as NVML sees it from the kit's process: device memory in use and utilisation, sampled
ten times a second while a phase runs. NVML opens no CUDA context, so the kit itself adds nothing
to what it measures. Without a driver (the dry run) every call answers None."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

INTERVAL_S = 0.1


def _handle() -> Any:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:
        return None


def _read(handle: Any) -> tuple[float, float] | None:
    import pynvml

    try:
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return mem.used / 2**20, float(util.gpu)
    except Exception:
        return None


def available() -> bool:
    return _handle() is not None


class Sampler:
    """Peak device memory (MB) and mean/peak utilisation (%) between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.handle = _handle()
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def baseline(self) -> float | None:
        """Device memory in use before the phase (the other processes' share, a few hundred MB at most)."""
        read = _read(self.handle) if self.handle is not None else None
        return round(read[0], 1) if read else None

    def start(self) -> None:
        if self.handle is not None:
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            read = _read(self.handle)
            if read:
                self.samples.append(read)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self._thread.join(2)
        if not self.samples:
            return {"available": self.handle is not None, "samples": 0}
        busy = [u for _, u in self.samples]
        return {"available": True, "samples": len(self.samples),
                "peak_used_mb": round(max(m for m, _ in self.samples), 1),
                "utilization_mean_pct": round(sum(busy) / len(busy), 1), "utilization_peak_pct": max(busy)}


def device_facts() -> dict[str, Any]:
    """GPU 0's name, UUID, memory, compute capability and driver, read here (to check the agent's)."""
    handle = _handle()
    if handle is None:
        return {}
    import pynvml

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else value

    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return {"name": text(pynvml.nvmlDeviceGetName(handle)), "uuid": text(pynvml.nvmlDeviceGetUUID(handle)),
            "memory_total_mb": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20,
            "compute_capability": f"{major}.{minor}", "driver": text(pynvml.nvmlSystemGetDriverVersion())}
