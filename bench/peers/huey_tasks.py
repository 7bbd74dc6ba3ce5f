"""The Huey instance the benchmark's consumer imports (SQLite file from the environment)."""

from __future__ import annotations

import os
import sqlite3
import time

from huey import SqliteHuey
from huey.storage import SqliteStorage


class NormalSyncStorage(SqliteStorage):
    """WAL with ``synchronous=NORMAL``, MLOC's own setting: the same durability on both sides.

    Huey's default (synchronous=FULL) fsyncs every enqueue, ~3 ms each on the dev machines' disk.
    """

    def _create_connection(self) -> sqlite3.Connection:
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


huey = SqliteHuey("mloc_bench", filename=os.environ.get("BENCH_HUEY_DB", "huey.db"), storage_class=NormalSyncStorage)


@huey.task()
def stamp() -> float:
    return time.time()


@huey.task()
def noop() -> bool:
    return True  # Huey stores no result for None, and the client waits on results
