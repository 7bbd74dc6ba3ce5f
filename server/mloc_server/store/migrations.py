"""Schema creation and migration, run once at coordinator start (synchronously, before serving)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from sqlalchemy import create_engine, inspect
from sqlmodel import SQLModel

from mloc_server.store import models  # noqa: F401  (registers the tables)

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1

# version -> step that brings the schema from version-1 to version. Column additions of nullable
# columns need no step: _add_missing_columns handles them.
STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {}


def migrate(path: str) -> int:
    """Create missing tables and columns, run versioned steps; returns the schema version."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        SQLModel.metadata.create_all(engine)
        _add_missing_columns(engine)
    finally:
        engine.dispose()
    con = sqlite3.connect(path)
    try:
        row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        current = int(row[0]) if row else SCHEMA_VERSION
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database schema is version {current}, newer than this coordinator ({SCHEMA_VERSION}); "
                "upgrade the coordinator"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            log.info("migrating database schema to version %d", version)
            step = STEPS.get(version)
            if step:
                step(con)
        con.execute(
            "INSERT INTO meta(key, value) VALUES('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(SCHEMA_VERSION),),
        )
        con.commit()
    finally:
        con.close()
    return SCHEMA_VERSION


def _add_missing_columns(engine) -> None:
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:
            existing = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in existing:
                    ddl = column.type.compile(dialect=engine.dialect)
                    log.info("adding column %s.%s", table.name, column.name)
                    conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {ddl}')
