"""The warden: a tiny process that kills the agent's task process groups if the agent dies.

Task processes run in their own process groups (so a signal to the agent's terminal does not
hit them and they can be killed as a whole). That also means nothing kills them when the agent is
killed with -9. The agent starts one warden and writes ``+PGID`` / ``-PGID`` lines to its stdin;
when stdin closes (the agent is gone, for whatever reason), the warden SIGTERMs every group still
registered, waits a short grace, then SIGKILLs them, so no orphan keeps holding a GPU.
"""

from __future__ import annotations

import os
import signal
import sys
import time

GRACE_S = 3.0


def _kill(groups: set[int], sig: int) -> set[int]:
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
            alive.add(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the agent's death (stdin EOF) stops us
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if line[0] == "+":
            groups.add(pgid)
        elif line[0] == "-":
            groups.discard(pgid)
    alive = _kill(groups, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = _kill(alive, 0)
    _kill(alive, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
