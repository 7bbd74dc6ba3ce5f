"""One lease's preemption (docs/scheduling.md, docs/modules.md): the coordinator's request, whether
the task can checkpoint on it, the task's acknowledgement, and whether the agent had to stop it.

The task gets the preempt file (its existence is the flag) and SIGUSR1, and ``grace_s`` to save a
checkpoint, acknowledge (``Preempted(step)`` on its channel) and exit; past the grace it is stopped.
The attempt is then reported ``preempted``, whatever the exit code (under torchrun a clean save still
exits 1), so it is queued again at once and is not a failed attempt.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mloc_shared.protocol import Completion, PreemptNotice

from mloc_agent.runner import TaskProcess
from mloc_agent.task_contract import PREEMPT_SIGNAL_NAME, Preempted


@dataclass
class LeasePreemption:
    preempt_file: Path
    say: Callable[[str], None]  # a system line in the task's logs
    cancel_grace_s: float
    task_type: str
    notice: PreemptNotice | None = None
    signalled_at: float | None = None
    can_checkpoint: bool = False  # the module says so for this spec (checkpoints_on_preempt)
    ack: Preempted | None = None
    stopped: bool = False  # the agent stopped it: the grace ran out, or it cannot checkpoint

    async def deliver(self, proc: TaskProcess) -> None:
        """The file and the signal, then the grace; stop the task if it is still running after it."""
        notice = self.notice
        assert notice is not None
        if not self.can_checkpoint:
            self.say("[mloc] this task cannot checkpoint on request: stopping it\n")
            self.stopped = True
            await proc.stop(self.cancel_grace_s)
            return
        body = json.dumps({"grace_s": notice.grace_s, "reason": notice.reason})
        await asyncio.to_thread(self.preempt_file.write_text, body)
        self.signalled_at = time.monotonic()
        if not proc.marks:  # not under torchrun: its launcher does not handle SIGUSR1 and would die of it
            proc.signal_task(getattr(signal, PREEMPT_SIGNAL_NAME))  # (its ranks see the file at their next step)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), notice.grace_s)
        except TimeoutError:
            self.say(f"[mloc] the task did not stop within the {notice.grace_s:g}s grace: stopping it\n")
            self.stopped = True
            await proc.stop(self.cancel_grace_s)

    def acknowledged(self, message: Preempted) -> None:
        self.ack = message
        self.say(f"[mloc] the task checkpointed at step {message.step} and stops for preemption\n")

    def ended_it(self, code: int | None) -> bool:
        """Whether the attempt ended for the request: it acknowledged, the agent stopped it, a command
        that opted in exited after the signal, or the signal itself ended the process (one that does not
        handle it: it resumes from its last checkpoint). A training task that just finished (0, no ack)
        succeeded; one that failed otherwise failed."""
        if self.notice is None:
            return False
        if self.ack is not None or self.stopped:
            return True
        if self.signalled_at is not None and code == -getattr(signal, PREEMPT_SIGNAL_NAME):
            return True
        return self.signalled_at is not None and self.task_type == "command"

    def command_checkpoint_due(self) -> bool:
        """A ``command`` that exited within the grace: its $MLOC_CHECKPOINT_DIR is the checkpoint to resume
        from (unless it sent its own, or the agent had to stop it)."""
        return self.task_type == "command" and not self.stopped and self.ack is None

    def completion(self, epoch: int, code: int | None, result: dict[str, Any]) -> Completion:
        assert self.notice is not None
        step = self.ack.step if self.ack is not None else None
        return Completion(epoch=epoch, outcome="preempted", exit_code=code,
                          result={**result, "preempted_at_step": step}, error=self.notice.reason or "preempted")
