"""The flow the benchmark deploys to Prefect (loaded by the process worker's child from this folder)."""

from __future__ import annotations

import time

from prefect import flow


@flow(persist_result=False)
def stamp(out: str) -> None:
    started = time.time()  # the first thing the body does: the shared rules' "start"
    with open(out, "w") as fh:
        fh.write(repr(started))
