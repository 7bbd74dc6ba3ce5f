"""What a task process's end means, as the Completion the agent reports: the task host's result file
and the exit code, read in the order that decides (a stall, a cancel, a success, the module's one-line
error, else the exit code with the tail of stderr). Preemption is decided before (lease_preemption.py).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from mloc_shared.hyperparams import STALLED
from mloc_shared.protocol import Completion


def read_result_file(path: Path) -> dict[str, Any]:
    """The task host's result file (modules/errors.py's failure, or ``{"result": …}``); {} if none."""
    if not path.exists():
        return {}
    with contextlib.suppress(ValueError, OSError):
        outcome = json.loads(path.read_text())
        return outcome if isinstance(outcome, dict) else {}
    return {}


def base_result(outcome: dict[str, Any], code: int | None) -> dict[str, Any]:
    result = outcome.get("result") if isinstance(outcome.get("result"), dict) else {}
    return {"exit_code": code, **(result or {})}


def completion_of(epoch: int, code: int | None, outcome: dict[str, Any], result: dict[str, Any], *,
                  stalled: str | None, cancel_reason: str | None, stderr_tail: str) -> Completion:
    if stalled is not None and cancel_reason is None:  # requeued like a lost box (leasing.py)
        return Completion(epoch=epoch, outcome="failed", exit_code=code, result=result, error=stalled,
                          error_code=STALLED, retryable=True)
    if cancel_reason is not None:
        return Completion(epoch=epoch, outcome="cancelled", exit_code=code, result=result, error=cancel_reason)
    if code == 0:
        return Completion(epoch=epoch, outcome="succeeded", exit_code=code, result=result)
    error_code, retryable = outcome.get("error_code"), outcome.get("retryable")
    # task_host's one-line error (modules/errors.py): the traceback stays in the task's logs
    if isinstance(error_code, str) and len(error_code) <= 64:
        return Completion(epoch=epoch, outcome="failed", exit_code=code, result={**result, "error_code": error_code},
                          error=str(outcome.get("error") or error_code), error_code=error_code,
                          retryable=retryable if isinstance(retryable, bool) else None)
    tail = stderr_tail.strip()[-1500:]
    error = outcome.get("error") or f"exited with code {code}"
    return Completion(epoch=epoch, outcome="failed", exit_code=code, result=result,
                      error=f"{error}\n{tail}" if tail else error)
