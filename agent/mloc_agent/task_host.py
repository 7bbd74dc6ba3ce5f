"""The child process that hosts one Python task module: ``python -I -u -m mloc_agent.task_host``.

The agent starts it in its own process group with CUDA_VISIBLE_DEVICES set, passes the lease in
``MLOC_TASK_FILE`` and reads progress from ``MLOC_PROGRESS_FD`` (task_contract.py). The result goes
to ``MLOC_RESULT_FILE``; a failure exits non-zero with the traceback on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import traceback

# The preemption signal (SIGUSR1) must never kill the host: modules poll the preempt file at their step
# boundaries (task_contract.py). Ignored, not caught: CPython puts a caught signal back to its default
# (death) while the interpreter shuts down, and a preemption arriving as a finished task exits would kill
# it; an ignored one stays ignored. Set first thing, so the window before it is the interpreter's start.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

from mloc_agent.modules.base import TaskContext  # noqa: E402
from mloc_agent.modules.errors import failure_of  # noqa: E402
from mloc_agent.modules.registry import load  # noqa: E402
from mloc_agent.task_contract import RESULT_FILE, TASK_FILE, PreemptedExit, TaskEnv  # noqa: E402


def main() -> int:
    env = TaskEnv.from_env()
    if env.task_file is None or env.result_file is None:
        print(f"{TASK_FILE} and {RESULT_FILE} are not set: only the agent starts the task host", file=sys.stderr)
        return 2
    task = json.loads(env.task_file.read_text())
    # isolated mode (task_contract.host_argv) ignored PYTHONPATH: the agent's own comes in the task file
    sys.path[:0] = [p for p in task.get("python_path", []) if p not in sys.path]
    ctx = TaskContext.from_env(task["spec"])
    try:
        module = load(task["module"])(ctx)
        result = asyncio.run(module.execute(progress_callback=ctx.progress))
    except KeyboardInterrupt:
        return 130
    except PreemptedExit:
        print("[mloc] stopped for preemption after saving a checkpoint", file=sys.stderr)
        return 0
    except Exception as exc:
        traceback.print_exc()  # the task's logs keep the traceback; its error is one line (modules/errors.py)
        failure = failure_of(exc)
        print(f"[mloc] task failed ({failure.error_code}): {failure.error}", file=sys.stderr)
        # under torchrun every rank hosts the module: the first rank to fail tells why ("x": never overwritten)
        with contextlib.suppress(FileExistsError), open(env.result_file, "x") as fh:
            json.dump(failure.as_result(), fh)
        return 1
    if env.rank == 0:  # global rank 0 alone writes the result (docs/distributed.md)
        with open(env.result_file, "w") as fh:
            json.dump({"result": result}, fh, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
