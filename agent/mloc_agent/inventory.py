"""What this box has: GPUs from NVML (or declared in config), CPU, memory, disk.

Without an NVIDIA driver ``nvmlInit`` raises NVMLError_LibraryNotFound: the agent still starts,
with a CPU-only inventory, and says why in what it reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

from mloc_shared.distributed import DISTRIBUTED_TYPES
from mloc_shared.protocol import Gpu, GpuStat, Inventory

from mloc_agent.settings import AgentSettings, DeclaredGpu


def _memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError):
        return 0


def declared(gpus: list[DeclaredGpu], agent_name: str) -> list[Gpu]:
    out = []
    for i, g in enumerate(gpus):
        uid = g.uuid or "DECLARED-" + hashlib.sha1(f"{agent_name}/{i}/{g.name}".encode()).hexdigest()[:12]
        out.append(Gpu(index=i, uuid=uid, name=g.name, memory_total_mb=int(g.memory_gb * 1024),
                       memory_free_mb=int(g.memory_gb * 1024), compute_capability=g.compute_capability,
                       declared=True))
    return out


def nvml_gpus() -> tuple[list[Gpu], str | None]:
    """GPUs from NVML, or ([], why not)."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"NVML unavailable ({exc}); no NVIDIA driver on this box?"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(Gpu(
                index=i, uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                name=name.decode() if isinstance(name, bytes) else name,
                memory_total_mb=mem.total // (1 << 20), memory_free_mb=mem.free // (1 << 20),
                compute_capability=f"{major}.{minor}", driver=driver,
            ))
        return gpus, None
    except pynvml.NVMLError as exc:
        return [], f"NVML query failed: {exc}"
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def gpu_stats() -> list[GpuStat] | None:
    """Utilisation and memory in use per GPU, for heartbeats and the status page (None without NVML)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        stats = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            stats.append(GpuStat(index=i, utilization_pct=float(util.gpu), memory_used_mb=mem.used // (1 << 20)))
        return stats
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


# the capabilities matching knows (server/mloc_server/services/scheduler.py names what needs them)
DEEPSPEED = "deepspeed"
CUDA_GPUS = "cuda-gpus"
_FIND_DEEPSPEED = "import importlib.util, sys; sys.exit(importlib.util.find_spec('deepspeed') is None)"


def has_deepspeed(runtimes: dict[str, str]) -> bool:
    """Whether DeepSpeed is installed where this agent's torchrun task types run: its own Python, or a
    runtime interpreter (``runtimes:``) of one of them. Found, never imported (it would load torch
    into the agent's process)."""
    if importlib.util.find_spec("deepspeed") is not None:
        return True
    for python in sorted({runtimes[t] for t in DISTRIBUTED_TYPES if t in runtimes}):
        try:
            found = subprocess.run([python, "-c", _FIND_DEEPSPEED], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return True
    return False


def capabilities(settings: AgentSettings, gpu_source: str) -> list[str]:
    found = [DEEPSPEED] if has_deepspeed(settings.runtimes) else []
    if gpu_source == "nvml":  # declared GPUs may be none at all (a CPU box standing in for a GPU one)
        found.append(CUDA_GPUS)
    return found


def collect(settings: AgentSettings, images: list[str] | None = None) -> Inventory:
    if settings.declared_gpus is not None:
        gpus, source, error = declared(settings.declared_gpus, settings.agent_name), "declared", None
    else:
        gpus, error = nvml_gpus()
        source = "nvml" if gpus else "none"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(Path(settings.data_dir))
    return Inventory(
        hostname=socket.gethostname(), gpus=gpus, gpu_source=source, nvml_error=error,
        cpu_count=os.cpu_count() or 1, memory_mb=_memory_mb(), disk_free_mb=disk.free // (1 << 20),
        platform=f"{platform.system()} {platform.machine()} python{platform.python_version()}",
        container_runtime=settings.container_runtime if images is not None else None, images=images or [],
        capabilities=capabilities(settings, source),
    )
