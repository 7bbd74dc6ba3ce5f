"""The coordinator's durable state behind one seam: ``Store`` (base.py), SQLite today (sqlite.py)."""

from mloc_server.store.base import Store, StoreTx
from mloc_server.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "StoreTx"]
