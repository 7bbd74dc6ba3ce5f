"""The child process that hosts one Python task module: ``python -m mloc_agent.task_host``.

The agent starts it in its own process group with CUDA_VISIBLE_DEVICES set, passes the lease in
``MLOC_TASK_FILE`` and reads progress from ``MLOC_PROGRESS_FD``. The result goes to
``MLOC_RESULT_FILE``; a failure exits non-zero with the traceback on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback

from mloc_agent.modules.base import TaskContext
from mloc_agent.modules.registry import load


def main() -> int:
    with open(os.environ["MLOC_TASK_FILE"]) as fh:
        task = json.load(fh)
    ctx = TaskContext.from_env(task["spec"])
    try:
        module = load(task["module"])(ctx)
        result = asyncio.run(module.execute(progress_callback=ctx.progress))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        traceback.print_exc()
        with open(os.environ["MLOC_RESULT_FILE"], "w") as fh:
            json.dump({"error": f"{type(exc).__name__}: {exc}"}, fh)
        return 1
    with open(os.environ["MLOC_RESULT_FILE"], "w") as fh:
        json.dump({"result": result}, fh, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
