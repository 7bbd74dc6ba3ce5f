"""The SQLite connection layer: one writer thread with group commit, one async reader.

Why one writer: SQLite allows one writer at a time, and "database is locked" under concurrent
writers is the most-filed bug of SQLite-backed schedulers. Every write is a small function run on
the writer thread; writes that arrive together share one transaction (each in its own SAVEPOINT,
so one failing write does not undo the others) and one commit. A write's awaitable resolves only
after its commit. WAL with synchronous=NORMAL by default: an answered write survives a killed
process, but an OS crash or a failing disk may lose the last commits not yet written back (as
Redis's default everysec fsync does). ``full`` puts every commit on disk before the answer (group
commit makes that one flush per batch); it doubles submit-to-lease latency here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from mloc_shared.errors import MlocError, Unavailable

from mloc_server.store.migrations import migrate

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 512
_STOP = object()
PRIVATE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")


def sqlite_path_from_url(url: str) -> str:
    """``sqlite:///abs/path.db`` or ``sqlite+aiosqlite:///...`` -> the file path."""
    for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    raise ValueError(f"unsupported database URL {url.split(':', 1)[0]}:…; this version supports sqlite:///PATH")


def make_private(path: str) -> None:
    """The database and its side files are readable by their owner only, whatever the umask: they hold
    every task's spec, log and result. The file is created 0600 before SQLite opens it (SQLite gives
    its -wal and -shm files the database file's mode); files an older version left open are closed."""
    if path == ":memory:" or path.startswith("file:"):
        return
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE))
    for name in (path, *(path + suffix for suffix in SIDE_FILES)):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, PRIVATE)
        except FileNotFoundError:
            pass
        except PermissionError:  # another account's file: say so, the coordinator can still use it
            log.warning("%s is readable by other users and not ours to change: chmod 600 it", name)


def _connect(path: str, *, readonly: bool = False, synchronous: str = "FULL") -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA busy_timeout=30000")
    con.execute(f"PRAGMA synchronous={'FULL' if synchronous.upper() == 'FULL' else 'NORMAL'}")
    con.execute("PRAGMA foreign_keys=ON")
    if readonly:
        con.execute("PRAGMA query_only=1")
    return con


def diagnose(path: str) -> str | None:
    """Why writes next to the database fail, found by trying one (read-only or full filesystem, I/O
    error): SQLite itself only says "disk I/O error" for a filesystem turned read-only under it."""
    probe = Path(path).parent / ".mloc-write-probe"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return f"{probe.parent}: {exc.strerror}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


class Database:
    """Owns the SQLite file: schema on open, group-committed writes, async reads."""

    def __init__(self, path: str, synchronous: str = "normal") -> None:
        self.synchronous = synchronous
        self.path = path
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: aiosqlite.Connection | None = None
        self.healthy = True
        self.last_error: str | None = None

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(make_private, self.path)
            await asyncio.to_thread(migrate, self.path)
            writer = _connect(self.path, synchronous=self.synchronous)
        except (sqlite3.Error, OSError) as exc:  # say what is wrong and exit, rather than a stack trace
            problem = await asyncio.to_thread(diagnose, self.path)
            raise Unavailable(f"cannot open the database {self.path} for writing: {exc}"
                              + (f" ({problem})" if problem else ""),
                              hint="fix the disk or the data dir (MLOC_DATA_DIR) and start the coordinator again"
                              ) from None
        self._thread = threading.Thread(target=self._run_writer, args=(writer,), name="mloc-db-writer", daemon=True)
        self._thread.start()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        await self._reader.execute("PRAGMA busy_timeout=30000")
        await self._reader.execute("PRAGMA query_only=1")
        await asyncio.to_thread(make_private, self.path)  # the -wal and -shm files exist now

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside a group-committed transaction; returns after the commit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, fut, loop))
        return await fut

    async def probe(self) -> bool:
        """After a failed write, whether the database works again, with no user write needed to find
        out: the filesystem takes a small file, and SQLite commits a real (page-dirtying) write."""
        if await asyncio.to_thread(diagnose, self.path) is not None:
            return False  # last_error still says what the failed write met
        with contextlib.suppress(MlocError):
            await self.write(lambda con: con.execute("UPDATE meta SET value=value WHERE key='schema_version'"))
        return self.healthy

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        assert self._reader is not None, "database not open"
        try:
            async with self._reader.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise Unavailable(f"database read failed: {exc}") from None

    async def read_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self.read(sql, params)
        return rows[0] if rows else None

    # -- the writer thread -------------------------------------------------------------------

    def _run_writer(self, con: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        self._commit_batch(con, batch)
                        return
                    batch.append(item)
                self._commit_batch(con, batch)
        finally:
            con.close()

    def _commit_batch(self, con: sqlite3.Connection, batch: list[Any]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            con.execute("BEGIN IMMEDIATE")
            for fn, _fut, _loop in batch:
                con.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, fn(con)))
                    con.execute("RELEASE op")
                except Exception as exc:  # the op's own failure: undo it alone
                    con.execute("ROLLBACK TO op")
                    con.execute("RELEASE op")
                    outcomes.append((False, self._wrap(exc)))
            con.execute("COMMIT")
            self.healthy, self.last_error = True, None
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            problem = diagnose(self.path)
            cause = f"{exc} ({problem})" if problem else str(exc)
            self.healthy, self.last_error = False, cause
            log.error("database write failed: %s", cause)
            err = Unavailable(f"database write failed: {cause}", hint="check the coordinator's disk and data dir")
            outcomes = [(False, err)] * len(batch)
        # one wake-up of the event loop per batch (each call_soon_threadsafe writes to its self-pipe)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_fn, fut, loop), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits for these
                loop.call_soon_threadsafe(_resolve_all, results)

    @staticmethod
    def _wrap(exc: Exception) -> Exception:
        if isinstance(exc, MlocError):
            return exc
        if isinstance(exc, sqlite3.Error):
            return Unavailable(f"database write failed: {exc}")
        return exc


def _resolve_all(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in results:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
