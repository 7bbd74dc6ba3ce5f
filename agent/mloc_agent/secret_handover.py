"""The agent's own secrets (``task_contract.AGENT_SECRETS``: the join token and the like) leave its
environment as it starts, so that no process of the agent shows them in ``/proc/<pid>/environ``, which
a ``command`` task (the same OS user) can read for every process of its user.

Deleting them from ``os.environ`` is not enough: ``/proc/<pid>/environ`` shows the environment the
process was started with. So the agent re-executes itself (same pid, same argv, same interpreter flags)
without those variables, and hands their values to the new image through an inherited pipe, which it
reads and closes at once. The ones that are settings (the join token) come back as settings, never
into ``os.environ``, so the warden and the tasks it starts cannot inherit them either.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import MutableMapping

from mloc_agent.task_contract import AGENT_SECRETS

HANDOVER_FD = "MLOC_HANDOVER_FD"  # the pipe's read end in the re-executed image (not a secret)


def reexec_without_secrets(environ: MutableMapping[str, str] = os.environ) -> None:
    """Replace this process with itself minus the secret variables; returns only when there are none."""
    found = {name: value for name, value in environ.items() if name.upper() in AGENT_SECRETS}
    if not found:
        return
    payload = json.dumps(found).encode()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # a payload the pipe cannot hold fails here instead of hanging
    try:
        if os.write(write_fd, payload) != len(payload):
            raise RuntimeError("the agent's secrets do not fit in a pipe: set them in the config file instead")
    finally:
        os.close(write_fd)
    os.set_inheritable(read_fd, True)
    env = {name: value for name, value in environ.items() if name not in found}
    env[HANDOVER_FD] = str(read_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def take_handover(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """What the previous image handed over (``MLOC_NAME`` -> value), read and closed; {} when nothing was."""
    fd = environ.pop(HANDOVER_FD, None)
    if fd is None:
        return {}
    with os.fdopen(int(fd), "rb") as pipe:
        return json.loads(pipe.read())


def as_settings(handed: dict[str, str], fields: set[str]) -> dict[str, str]:
    """The handed-over variables that are settings of ``fields``, by field name (``join_token``)."""
    named = {name.upper().removeprefix("MLOC_").lower(): value for name, value in handed.items()}
    return {name: value for name, value in named.items() if name in fields}
