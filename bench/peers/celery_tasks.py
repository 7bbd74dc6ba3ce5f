"""The Celery app the benchmark's worker imports (broker and backend from the environment)."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("mloc_bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(worker_hijack_root_logger=False, result_expires=600, broker_connection_retry_on_startup=True)


@app.task
def stamp() -> float:
    return time.time()


@app.task
def noop() -> None:
    return None
