"""Checkpoint-and-stop on a preemption request, for the Hugging Face trainers (sft, dpo, grpo,
reward_model). The agent writes ``$MLOC_PREEMPT_FILE`` and sends SIGUSR1 (task_contract.py); this
callback sees the file at the next step boundary, makes the trainer save a checkpoint and stop,
and once that checkpoint is saved (the progress callback's ``on_save`` has handed it to the agent for
upload) acknowledges with ``Preempted(step)`` and leaves the module through ``PreemptedExit``, so no
final adapter is written and the next attempt resumes from that step.

transformers' own ``enable_jit_checkpoint`` is not used: it listens to SIGTERM (the agent's cancel
signal), waits a fixed 3 s, and saves without calling ``on_save``, so the checkpoint would never
be uploaded nor acknowledged.
"""

from __future__ import annotations

from typing import Any

from mloc_agent.modules.base import TaskContext
from mloc_agent.task_contract import Preempted, PreemptedExit, preempt_requested


def agreed(flag: bool, device: Any = "cpu") -> bool:
    """Whether any rank saw the request: ranks check the file on their own and may see it a step apart,
    but must stop at the same step (a checkpoint save is collective). One tiny all-reduce a step, only
    when there are several ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    seen = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return bool(seen.item())


def make_preemption_callback(ctx: TaskContext) -> Any:
    """A TrainerCallback bound to this task; put it after the progress callback (its ``on_save`` runs first)."""
    from transformers import TrainerCallback

    class MlocPreemption(TrainerCallback):
        def __init__(self) -> None:
            self.stopping = False

        def on_step_end(self, args, state, control, **kwargs):
            if not self.stopping and agreed(preempt_requested(), args.device):
                self.stopping = True
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            if self.stopping:
                if state.is_world_process_zero:
                    ctx.send(Preempted(state.global_step))
                raise PreemptedExit(f"preempted at step {state.global_step}")
            return control

    return MlocPreemption()
