"""The errors task modules raise on purpose, and how any failure becomes a task's error.

    TaskError               task_failed      retryable   a one-line message for the user
    ├── TaskInputError      bad_input        final       the spec names something this agent cannot use
    │   ├── ModelSourceError  model_source   final       model.source: no such path, task or hub repo
    │   ├── DatasetError      bad_dataset    final       dataset: unreadable, no rows, unknown column
    │   ├── HubUnreachable    hub_unreachable final      the agent cannot reach the Hugging Face Hub
    │   ├── HubAccessDenied   hub_access     final       a gated or private repo, no HF_TOKEN for it
    │   ├── UrlRefused        url_refused    final       a URL to a private address or the coordinator
    │   ├── PathRefused       path_refused   final       a path outside the roots the agent lets tasks read
    │   └── Unavailable       unavailable    final       a package or data the task asks for is not on this agent
    └── TransientError      transient        retryable   a fault that may pass (a download's 503)

An input error fails the task on its first attempt: another attempt would read the same spec.
``failure_of`` turns any exception (ours, or huggingface_hub's and transformers' own) into the one
line, code and retryability the task host reports; the traceback goes to the task's logs only.
Stdlib only: the vLLM runtime imports this too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

MAX_MESSAGE = 500
HUB_MODEL_FIX = ("put the model on the agent (model.source type: local) or give the agent network access to the "
                 "Hub, and HF_TOKEN for gated models")


class TaskError(Exception):
    """Base of the errors a module raises on purpose; the message is what the user reads."""

    code: ClassVar[str] = "task_failed"
    retryable: ClassVar[bool] = True


class TaskInputError(TaskError, ValueError):
    """The spec names something this agent cannot use (a missing path, an unsupported source)."""

    code = "bad_input"
    retryable = False


class ModelSourceError(TaskInputError):
    code = "model_source"


class DatasetError(TaskInputError):
    code = "bad_dataset"


class HubUnreachable(TaskInputError):
    """Final for this agent: without network (or with HF_HUB_OFFLINE) the next attempt fails the same."""

    code = "hub_unreachable"


class HubAccessDenied(TaskInputError):
    code = "hub_access"


class UrlRefused(TaskInputError):
    """The agent does not fetch this URL for a task (sources/url_policy.py)."""

    code = "url_refused"


class PathRefused(TaskInputError):
    """The agent does not read this path for a task (sources/path_policy.py)."""

    code = "path_refused"


class Unavailable(TaskInputError):
    """An optional package (lm_eval, rouge-score) or its data is missing here: another attempt on this agent
    fails the same, so the message names what to install or place."""

    code = "unavailable"


class TransientError(TaskError):
    code = "transient"
    retryable = True


@dataclass(frozen=True)
class Failure:
    """What the task host writes to its result file for a failed task."""

    error: str
    error_code: str
    retryable: bool

    def as_result(self) -> dict[str, str | bool]:
        return {"error": self.error, "error_code": self.error_code, "retryable": self.retryable}


def one_line(text: str) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def _chain(exc: BaseException, *, implicit: bool) -> list[BaseException]:
    """The exception and what it was raised from (``raise ... from``); with ``implicit``, also what it
    was raised while handling (libraries such as transformers wrap the hub's errors either way)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or (current.__context__ if implicit else None)
    return seen


def _hub_failure(exc: BaseException) -> Failure | None:
    """huggingface_hub's own error types, looked up only if the task already imported the library."""
    hub = sys.modules.get("huggingface_hub.errors")
    if hub is None:
        return None
    detail = one_line(str(exc))
    if isinstance(exc, hub.GatedRepoError):
        return Failure(f"{detail} — the model is gated on the Hugging Face Hub: accept its terms there and give the "
                       "agent an HF_TOKEN with access", HubAccessDenied.code, False)
    if isinstance(exc, (hub.RepositoryNotFoundError, hub.RevisionNotFoundError)):
        return Failure(f"{detail} — not on the Hugging Face Hub (a private repo needs HF_TOKEN on the agent)",
                       ModelSourceError.code, False)
    if isinstance(exc, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)):
        return Failure(f"the agent cannot reach the Hugging Face Hub and the files are not in its cache ({detail}); "
                       + HUB_MODEL_FIX, HubUnreachable.code, False)
    return None


def failure_of(exc: BaseException) -> Failure:
    """The one-line error, its code and whether another attempt may succeed, for any exception."""
    for link in _chain(exc, implicit=False):  # a bug in an ``except TaskInputError`` block is still a bug
        if isinstance(link, TaskError):
            return Failure(one_line(str(link)) or type(link).__name__, link.code, link.retryable)
    for link in _chain(exc, implicit=True):
        hub = _hub_failure(link)
        if hub is not None:
            return hub
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda: another GPU (or a smaller batch) may fit
        return Failure(f"out of GPU memory: {one_line(str(exc))}", "out_of_memory", True)
    detail = one_line(str(exc))
    return Failure(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__, "task_failed", True)
