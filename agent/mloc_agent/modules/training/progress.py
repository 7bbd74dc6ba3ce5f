"""Training progress and checkpoints for Hugging Face trainers, reported through the task context.

A transformers ``TrainerCallback`` turns the trainer's logs into progress lines (step/total, loss,
learning rate, tokens/s, ETA) and every checkpoint the trainer saves into a checkpoint upload, so
the next attempt — on any agent — resumes from it. transformers is imported inside the factory:
module files must stay importable without torch.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mloc_agent.modules.base import ProgressCallback, TaskContext

log = logging.getLogger(__name__)
SEND_EVERY_S = 0.5
KEEP_CHECKPOINT_COPIES = 3


@dataclass
class TrainingRecord:
    """What the callback saw, for the task's result."""

    resumed_from_step: int | None = None
    start_step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    last_logs: dict[str, float] = field(default_factory=dict)
    tokens_start: float | None = None

    def loss_summary(self) -> dict[str, Any]:
        if not self.losses:
            return {}
        return {"first_loss": self.losses[0][1], "final_loss": self.losses[-1][1],
                "losses": [[s, round(v, 6)] for s, v in _thin(self.losses, 50)]}


def _thin(points: list[tuple[int, float]], most: int) -> list[tuple[int, float]]:
    if len(points) <= most:
        return points
    stride = math.ceil(len(points) / most)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


def _copy_checkpoint(src: Path, dest: Path) -> None:
    """Hard links where possible: instant, and the trainer's rotation cannot pull files from under the upload."""
    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link_or_copy, dirs_exist_ok=True)


def make_progress_callback(ctx: TaskContext, progress: ProgressCallback | None, record: TrainingRecord) -> Any:
    """A TrainerCallback bound to this task; ``record`` collects losses and the resume step."""
    from transformers import TrainerCallback

    send = progress or ctx.progress

    class MlocProgress(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.last_sent = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            record.start_step = state.global_step
            if state.global_step > 0:
                record.resumed_from_step = state.global_step
            send({"step": state.global_step, "total": state.max_steps or None,
                  "message": f"resumed at step {state.global_step}" if state.global_step else "training"})

        def _update(self, state, force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - self.last_sent < SEND_EVERY_S:
                return
            self.last_sent = now
            done = state.global_step - record.start_step
            elapsed = now - self.started
            update: dict[str, Any] = {"step": state.global_step, "total": state.max_steps or None}
            if done > 0 and state.max_steps:
                update["eta_s"] = round(max(0, state.max_steps - state.global_step) * elapsed / done, 1)
            logs = record.last_logs
            if "loss" in logs:
                update["loss"] = logs["loss"]
            if "learning_rate" in logs:
                update["learning_rate"] = logs["learning_rate"]
            tokens = logs.get("num_tokens") or float(getattr(state, "num_input_tokens_seen", 0) or 0)
            if tokens and record.tokens_start is not None and elapsed > 0:
                update["tokens_per_s"] = round((tokens - record.tokens_start) / elapsed, 1)
            metrics = {k: float(v) for k, v in logs.items()
                       if k not in ("loss", "learning_rate") and isinstance(v, int | float) and math.isfinite(v)}
            if metrics:
                update["metrics"] = dict(list(metrics.items())[:20])
            send(update)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if "loss" in logs and math.isfinite(logs["loss"]):
                record.losses.append((state.global_step, float(logs["loss"])))
            if "num_tokens" in logs and record.tokens_start is None:
                record.tokens_start = 0.0 if record.start_step == 0 else float(logs["num_tokens"])
            if "train_runtime" not in logs:  # the final summary is not a step's log
                record.last_logs = logs
            self._update(state, force=state.global_step == state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            self._update(state)

        def on_train_end(self, args, state, control, **kwargs):
            self._update(state, force=True)

        def on_save(self, args, state, control, **kwargs):
            if ctx.rank != 0:  # rank 0's copy is the one uploaded; every rank restores from it
                return
            src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not src.is_dir():
                log.warning("trainer reported a save but %s does not exist", src)
                return
            dest = ctx.checkpoint_dir / src.name
            _copy_checkpoint(src, dest)
            record.checkpoints.append(state.global_step)
            ctx.save_checkpoint(dest, state.global_step)
            copies = sorted(ctx.checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
            for old in copies[:-KEEP_CHECKPOINT_COPIES]:  # uploaded long ago: keep disk use bounded
                shutil.rmtree(old, ignore_errors=True)

    return MlocProgress()


def resume_checkpoint(ctx: TaskContext) -> str | None:
    """The folder to resume from: the checkpoint the agent downloaded for this attempt, if any."""
    if ctx.resume_dir is None:
        return None
    states = sorted(ctx.resume_dir.rglob("trainer_state.json"), key=lambda p: len(p.parts))
    if not states:
        log.warning("resume folder %s holds no trainer_state.json; starting from step 0", ctx.resume_dir)
        return None
    return str(states[0].parent)
