"""A TrainerCallback that writes the process's peak CUDA memory when training ends.

Both training paths load it: MLOC's sft module through ``hyperparameters.callbacks``
(``bench.gpu.peak_memory:PeakMemory``; the file lands in ``$MLOC_OUTPUT_DIR`` and comes back as
an artifact), the bare TRL script directly. The same callback on both sides keeps their work equal.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

from transformers import TrainerCallback

FILE = "gpu_memory.json"
TARGET_DIR = "BENCH_GPU_MEMORY_DIR"  # the bare script's output folder; MLOC's tasks use MLOC_OUTPUT_DIR


def peak_memory() -> dict[str, object]:
    """Peak bytes PyTorch's allocator held (allocated and reserved) since the process started, in MB."""
    import torch

    out: dict[str, object] = {"cuda": torch.cuda.is_available(),
                              "cpu_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out.update(device=torch.cuda.get_device_name(0),
                   max_allocated_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1),
                   max_reserved_mb=round(torch.cuda.max_memory_reserved() / 2**20, 1))
    return out


class PeakMemory(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        folder = os.environ.get(TARGET_DIR) or os.environ.get("MLOC_OUTPUT_DIR") or args.output_dir
        path = Path(folder) / FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**peak_memory(), "global_step": state.global_step}))
